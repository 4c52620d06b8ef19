export { SignIn } from './components/SignIn';
export { SessionMenu } from './components/SessionMenu';
export { useSession } from './hooks/use-session';
export { exportRefusal } from './utils/scopes';
export type { Session } from './types';
