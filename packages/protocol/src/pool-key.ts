/**
 * A pool's key, (database, user), as the coordinator's registry and every
 * worker spell it: one format, made and split only here.
 */
export function poolKey(database: string, user: string): string {
  return `${database}\u0000${user}`
}

/** The database and the user of a key made by poolKey. */
export function splitPoolKey(key: string): [database: string, user: string] {
  const at = key.indexOf('\u0000')
  return [key.slice(0, at), key.slice(at + 1)]
}
