/** Where a load generator connects: one target's address and login. */
export interface Endpoint {
  host: string
  port: number
  user: string
  database: string
}
