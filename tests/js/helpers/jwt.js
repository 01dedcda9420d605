// HS256 JWTs signed with the test server's ROSTER_JWT_SECRET (node:crypto only).
import { createHmac } from 'node:crypto'
import { JWT_SECRET } from './server.js'

const b64url = (buf) => Buffer.from(buf).toString('base64url')

/** Sign `claims` (an object) as an HS256 JWT. */
export function signJwt(claims, secret = JWT_SECRET) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))
  const body = b64url(JSON.stringify(claims))
  const sig = createHmac('sha256', secret).update(`${header}.${body}`).digest('base64url')
  return `${header}.${body}.${sig}`
}

export const nowSeconds = () => Math.floor(Date.now() / 1000)

/**
 * A user token: role `authenticated` (unless given), `sub`, and `exp` = now + `expiresIn`
 * seconds (negative for an already expired token).
 */
export function userJwt({ sub = 'user', role = 'authenticated', expiresIn = 3600, ...claims } = {}) {
  const now = nowSeconds()
  return signJwt({ sub, role, iat: now + Math.min(0, expiresIn) - 1, exp: now + expiresIn, ...claims })
}
