import { Dashboard } from '@/features/dashboard';

export function App() {
  return (
    <div className="app">
      <header className="app-header">
        <h1>Sensor trends</h1>
      </header>
      <Dashboard />
    </div>
  );
}
