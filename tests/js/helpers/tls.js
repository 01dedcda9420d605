// Test certificates from the openssl CLI: a CA and a `localhost` server
// pair it signs, in a temporary folder removed at exit.
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'

function openssl(dir, args) {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] })
}

/** Resolves to `{ dir, caFile, ca, certFile, keyFile }` (paths, and the CA's PEM text). */
export function makeTestCerts(name = 'localhost') {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'roster-tls-'))
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }))
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
  openssl(dir, ['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2',
    '-subj', '/CN=Roster JS test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign'])
  openssl(dir, ['req', ...ec, '-keyout', 'key.pem', '-out', 'server.csr', '-subj', `/CN=${name}`])
  writeFileSync(path.join(dir, 'ext.cnf'),
    `subjectAltName=DNS:${name}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`)
  openssl(dir, ['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key',
    '-CAcreateserial', '-out', 'cert.pem', '-days', '2', '-extfile', 'ext.cnf'])
  const caFile = path.join(dir, 'ca.pem')
  return {
    dir,
    caFile,
    ca: readFileSync(caFile),
    certFile: path.join(dir, 'cert.pem'),
    keyFile: path.join(dir, 'key.pem'),
  }
}
