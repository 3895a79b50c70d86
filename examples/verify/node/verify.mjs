// Verifies the signature of a webhookd delivery, as a receiver does, with Node's built-in
// crypto only (Node 16 or later).
//
//     node verify.mjs JWKS_FILE HEADERS_FILE BODY_FILE
//
// JWKS_FILE: webhookd's `GET /.well-known/jwks.json`; HEADERS_FILE: the request's headers as a
// JSON object with lowercase names; BODY_FILE: the raw request body, byte for byte. Prints
// `verified` and exits 0, or prints why not and exits 1.
import { createPublicKey, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';

const TOLERANCE_SECONDS = 5 * 60;

// OBP deliveries: `webhook-signature: v1a,<base64>` is Ed25519 over
// `{webhook-id}.{webhook-timestamp}.{body}`. It names no key: accept it if any Ed25519 key of
// the JWKS verifies it (after a rotation the JWKS has several). `body` is a Buffer.
function verifyObp(jwks, headers, body) {
  const id = headers['webhook-id'];
  const timestamp = headers['webhook-timestamp'];
  const age = Date.now() / 1000 - Number(timestamp);
  if (!(Math.abs(age) <= TOLERANCE_SECONDS)) {
    throw new Error('webhook-timestamp is more than 5 minutes away from now');
  }
  const signed = Buffer.concat([Buffer.from(`${id}.${timestamp}.`), body]);
  const signatures = (headers['webhook-signature'] ?? '')
    .split(' ')
    .filter((s) => s.startsWith('v1a,'))
    .map((s) => Buffer.from(s.slice('v1a,'.length), 'base64'));
  const keys = jwks.keys
    .filter((k) => k.kty === 'OKP' && k.crv === 'Ed25519')
    .map((k) => createPublicKey({ key: k, format: 'jwk' }));
  if (!keys.some((key) => signatures.some((sig) => verify(null, signed, key, sig)))) {
    throw new Error('no Ed25519 key of the JWKS verifies webhook-signature');
  }
}

// Rabo deliveries: `x-smartpay-signature` is a detached ES256 JWS `header..signature` over the
// raw body, signed with the JWKS key of the JWS header's kid. `body` is a Buffer.
function verifyRabo(jwks, headers, body) {
  const parts = (headers['x-smartpay-signature'] ?? '').split('.');
  if (parts.length !== 3 || parts[1] !== '') {
    throw new Error('x-smartpay-signature is not a detached JWS');
  }
  const [header, , signature] = parts;
  const { alg, kid } = JSON.parse(Buffer.from(header, 'base64url'));
  if (alg !== 'ES256') throw new Error(`unexpected JWS alg ${alg}`);
  const jwk = jwks.keys.find((k) => k.kid === kid && k.kty === 'EC' && k.crv === 'P-256');
  if (!jwk) throw new Error(`kid ${kid} is not in the JWKS: fetch it again`);
  const key = createPublicKey({ key: jwk, format: 'jwk' });
  const input = Buffer.from(`${header}.${body.toString('base64url')}`);
  const ok = verify('sha256', input, { key, dsaEncoding: 'ieee-p1363' }, Buffer.from(signature, 'base64url'));
  if (!ok) throw new Error('the ES256 signature does not verify');
}

const [jwksFile, headersFile, bodyFile] = process.argv.slice(2);
if (!bodyFile) {
  console.error('usage: node verify.mjs JWKS_FILE HEADERS_FILE BODY_FILE');
  process.exit(2);
}
const jwks = JSON.parse(readFileSync(jwksFile, 'utf8'));
const headers = JSON.parse(readFileSync(headersFile, 'utf8'));
const body = readFileSync(bodyFile);
try {
  if ('x-smartpay-signature' in headers) verifyRabo(jwks, headers, body);
  else verifyObp(jwks, headers, body);
  console.log('verified');
} catch (e) {
  console.error(`not verified: ${e.message}`);
  process.exit(1);
}
