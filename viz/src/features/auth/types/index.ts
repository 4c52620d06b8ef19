/** `GET /api/v1/session`: who this browser is signed in as. */
export interface Session {
  /** The token's name (`engine token create --name`). */
  name: string;
  token_id: string | null;
  /** `admin`, `read:PATTERN`, `export:PATTERN`, `write:PATTERN`. */
  scopes: string[];
  /** False when the engine runs with `--no-auth`: nobody signs in. */
  auth: boolean;
  can_export: boolean;
  can_write: boolean;
}
