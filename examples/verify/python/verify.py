"""Verifies the signature of a webhookd delivery, as a receiver does.

    python verify.py JWKS_FILE HEADERS_FILE BODY_FILE

JWKS_FILE: webhookd's `GET /.well-known/jwks.json`; HEADERS_FILE: the request's headers as a
JSON object with lowercase names; BODY_FILE: the raw request body, byte for byte. Prints
`verified` and exits 0, or prints why not and exits 1. Needs jwcrypto and cryptography
(requirements.txt).
"""

import base64
import json
import sys
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jwcrypto import jwk, jws

TOLERANCE_SECONDS = 5 * 60


def verify_obp(jwks_text, headers, body):
    """OBP deliveries: `webhook-signature: v1a,<base64>` is Ed25519 over
    `{webhook-id}.{webhook-timestamp}.{body}`. It names no key: accept it if any Ed25519 key
    of the JWKS verifies it (after a rotation the JWKS has several)."""
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
        raise ValueError("webhook-timestamp is more than 5 minutes away from now")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    signatures = [
        base64.b64decode(s[len("v1a,"):])
        for s in headers["webhook-signature"].split()
        if s.startswith("v1a,")
    ]
    for key in json.loads(jwks_text)["keys"]:
        if key.get("kty") != "OKP" or key.get("crv") != "Ed25519":
            continue
        public_key = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(key["x"] + "=="))
        for signature in signatures:
            try:
                public_key.verify(signature, signed)
                return
            except InvalidSignature:
                pass
    raise ValueError("no Ed25519 key of the JWKS verifies webhook-signature")


def verify_rabo(jwks_text, headers, body):
    """Rabo deliveries: `x-smartpay-signature` is a detached ES256 JWS over the raw body,
    signed with the JWKS key of the JWS header's kid."""
    token = jws.JWS()
    token.deserialize(headers["x-smartpay-signature"])
    kid = token.jose_header.get("kid")
    key = jwk.JWKSet.from_json(jwks_text).get_key(kid)
    if key is None:
        raise ValueError(f"kid {kid!r} is not in the JWKS: fetch it again")
    token.verify(key, alg="ES256", detached_payload=body)


def main(jwks_file, headers_file, body_file):
    with open(jwks_file) as f:
        jwks_text = f.read()
    with open(headers_file) as f:
        headers = json.load(f)
    with open(body_file, "rb") as f:
        body = f.read()
    try:
        if "x-smartpay-signature" in headers:
            verify_rabo(jwks_text, headers, body)
        else:
            verify_obp(jwks_text, headers, body)
    except Exception as e:  # every failure means: do not trust this request
        print(f"not verified: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print("verified")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
