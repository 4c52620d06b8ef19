import { render, screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { json, mockFetch } from '@/testing/fetch-mock';
import { SignIn } from './SignIn';

afterEach(() => vi.unstubAllGlobals());

const me = { name: 'analyst', token_id: 'tok_1', scopes: ['read:**'], auth: true, can_export: false, can_write: false };

describe('SignIn', () => {
  it('exchanges the token for a session with POST /api/v1/session, then forgets it', async () => {
    const user = userEvent.setup();
    const bodies: unknown[] = [];
    mockFetch((u, init) => {
      if (u.pathname !== '/api/v1/session' || init?.method !== 'POST') return undefined;
      bodies.push(JSON.parse(String(init.body)));
      return json(me);
    });
    const onSignedIn = vi.fn();
    render(<SignIn onSignedIn={onSignedIn} />);
    const box = screen.getByLabelText('Token');
    expect(box).toHaveProperty('type', 'password');
    await user.type(box, '  stse_abc  ');
    await user.click(screen.getByRole('button', { name: 'Sign in' }));
    await waitFor(() => expect(onSignedIn).toHaveBeenCalledWith(me));
    expect(bodies).toEqual([{ token: 'stse_abc' }]);
    expect(box).toHaveProperty('value', '');
  });

  it('a refused token: a clear message, no sign-in', async () => {
    const user = userEvent.setup();
    mockFetch((u) => (u.pathname === '/api/v1/session' ? json({ error: 'unauthorized', message: 'unknown token' }, 401) : undefined));
    const onSignedIn = vi.fn();
    render(<SignIn onSignedIn={onSignedIn} />);
    await user.type(screen.getByLabelText('Token'), 'stse_wrong');
    await user.click(screen.getByRole('button', { name: 'Sign in' }));
    expect((await screen.findByRole('alert')).textContent).toMatch(/not accepted: it is unknown, expired or revoked/);
    expect(onSignedIn).not.toHaveBeenCalled();
  });

  it('an empty token is not sent; the server being busy is said as such', async () => {
    const user = userEvent.setup();
    const { calls } = mockFetch((u) => (u.pathname === '/api/v1/session' ? json({ error: 'too_many_requests', message: 'too many failed authentications' }, 429) : undefined));
    render(<SignIn onSignedIn={vi.fn()} notice="That sign-in link was already used" />);
    expect(screen.getByRole('status').textContent).toContain('already used');
    await user.click(screen.getByRole('button', { name: 'Sign in' }));
    expect(screen.getByRole('alert').textContent).toBe('Paste a token first.');
    expect(calls).toHaveLength(0);
    await user.type(screen.getByLabelText('Token'), 'stse_x');
    await user.click(screen.getByRole('button', { name: 'Sign in' }));
    await waitFor(() => expect(screen.getByRole('alert').textContent).toMatch(/too many failed authentications/));
  });
});
