// Verifies the signature of a webhookd delivery, as a receiver does, with Go's standard
// library only (Go 1.16 or later).
//
//	go run verify.go JWKS_FILE HEADERS_FILE BODY_FILE
//
// JWKS_FILE: webhookd's `GET /.well-known/jwks.json`; HEADERS_FILE: the request's headers as a
// JSON object with lowercase names; BODY_FILE: the raw request body, byte for byte. Prints
// `verified` and exits 0, or prints why not and exits 1.
package main

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strconv"
	"strings"
	"time"
)

const toleranceSeconds = 5 * 60

// JWKS is the JSON Web Key Set of `GET /.well-known/jwks.json`, as far as a receiver needs it.
type JWKS struct {
	Keys []struct {
		Kty string `json:"kty"`
		Crv string `json:"crv"`
		Kid string `json:"kid"`
		X   string `json:"x"`
		Y   string `json:"y"`
	} `json:"keys"`
}

// verifyOBP checks an OBP delivery: `webhook-signature: v1a,<base64>` is Ed25519 over
// `{webhook-id}.{webhook-timestamp}.{body}`. It names no key: accept it if any Ed25519 key of
// the JWKS verifies it (after a rotation the JWKS has several).
func verifyOBP(jwks JWKS, headers map[string]string, body []byte) error {
	id, timestamp := headers["webhook-id"], headers["webhook-timestamp"]
	ts, err := strconv.ParseInt(timestamp, 10, 64)
	if age := time.Now().Unix() - ts; err != nil || age > toleranceSeconds || age < -toleranceSeconds {
		return errors.New("webhook-timestamp is missing or more than 5 minutes away from now")
	}
	signed := append([]byte(id+"."+timestamp+"."), body...)
	for _, k := range jwks.Keys {
		key, err := base64.RawURLEncoding.DecodeString(k.X)
		if k.Kty != "OKP" || k.Crv != "Ed25519" || err != nil || len(key) != ed25519.PublicKeySize {
			continue
		}
		for _, s := range strings.Fields(headers["webhook-signature"]) {
			if !strings.HasPrefix(s, "v1a,") {
				continue
			}
			sig, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(s, "v1a,"))
			if err == nil && ed25519.Verify(key, signed, sig) {
				return nil
			}
		}
	}
	return errors.New("no Ed25519 key of the JWKS verifies webhook-signature")
}

// verifyRabo checks a Rabo delivery: `x-smartpay-signature` is a detached ES256 JWS
// `header..signature` over the raw body, signed with the JWKS key of the JWS header's kid.
func verifyRabo(jwks JWKS, headers map[string]string, body []byte) error {
	parts := strings.Split(headers["x-smartpay-signature"], ".")
	if len(parts) != 3 || parts[1] != "" {
		return errors.New("x-smartpay-signature is not a detached JWS")
	}
	var header struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	rawHeader, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil || json.Unmarshal(rawHeader, &header) != nil || header.Alg != "ES256" {
		return errors.New("the JWS header is not an ES256 header")
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		return errors.New("the JWS signature is not 64 bytes of base64url")
	}
	for _, k := range jwks.Keys {
		if k.Kid != header.Kid || k.Kty != "EC" || k.Crv != "P-256" {
			continue
		}
		x, errX := base64.RawURLEncoding.DecodeString(k.X)
		y, errY := base64.RawURLEncoding.DecodeString(k.Y)
		key := ecdsa.PublicKey{Curve: elliptic.P256(), X: new(big.Int).SetBytes(x), Y: new(big.Int).SetBytes(y)}
		if errX != nil || errY != nil || !key.Curve.IsOnCurve(key.X, key.Y) {
			return fmt.Errorf("the JWKS key %q is not a P-256 point", k.Kid)
		}
		// The signing input is BASE64URL(header) "." BASE64URL(body); the signature is r || s.
		digest := sha256.Sum256([]byte(parts[0] + "." + base64.RawURLEncoding.EncodeToString(body)))
		r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		if !ecdsa.Verify(&key, digest[:], r, s) {
			return errors.New("the ES256 signature does not verify")
		}
		return nil
	}
	return fmt.Errorf("kid %q is not in the JWKS: fetch it again", header.Kid)
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: go run verify.go JWKS_FILE HEADERS_FILE BODY_FILE")
		os.Exit(2)
	}
	err := run(os.Args[1], os.Args[2], os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, "not verified:", err)
		os.Exit(1)
	}
	fmt.Println("verified")
}

func run(jwksFile, headersFile, bodyFile string) error {
	var jwks JWKS
	var headers map[string]string
	if err := readJSON(jwksFile, &jwks); err != nil {
		return err
	}
	if err := readJSON(headersFile, &headers); err != nil {
		return err
	}
	body, err := os.ReadFile(bodyFile)
	if err != nil {
		return err
	}
	if _, ok := headers["x-smartpay-signature"]; ok {
		return verifyRabo(jwks, headers, body)
	}
	return verifyOBP(jwks, headers, body)
}

func readJSON(file string, into interface{}) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	return json.Unmarshal(data, into)
}
