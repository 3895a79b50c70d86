// Verifies the signature of a webhookd delivery, as a receiver does, with the JDK only
// (JDK 15 or later, for Ed25519).
//
//     java Verify.java JWKS_FILE HEADERS_FILE BODY_FILE
//
// JWKS_FILE: webhookd's `GET /.well-known/jwks.json`; HEADERS_FILE: the request's headers as a
// JSON object with lowercase names; BODY_FILE: the raw request body, byte for byte. Prints
// `verified` and exits 0, or prints why not and exits 1.

import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.AlgorithmParameters;
import java.security.GeneralSecurityException;
import java.security.KeyFactory;
import java.security.PublicKey;
import java.security.Signature;
import java.security.SignatureException;
import java.security.spec.ECGenParameterSpec;
import java.security.spec.ECParameterSpec;
import java.security.spec.ECPoint;
import java.security.spec.ECPublicKeySpec;
import java.security.spec.EdECPoint;
import java.security.spec.EdECPublicKeySpec;
import java.security.spec.NamedParameterSpec;
import java.util.ArrayList;
import java.util.Base64;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class Verify {
    static final long TOLERANCE_SECONDS = 5 * 60;

    /**
     * OBP deliveries: {@code webhook-signature: v1a,<base64>} is Ed25519 over
     * {@code {webhook-id}.{webhook-timestamp}.{body}}. It names no key: accept it if any Ed25519
     * key of the JWKS verifies it (after a rotation the JWKS has several).
     */
    static void verifyObp(List<Map<String, String>> jwks, Map<String, String> headers, byte[] body)
            throws GeneralSecurityException {
        String id = headers.get("webhook-id"), timestamp = headers.get("webhook-timestamp");
        long age = System.currentTimeMillis() / 1000 - Long.parseLong(timestamp);
        if (Math.abs(age) > TOLERANCE_SECONDS) {
            throw new SignatureException("webhook-timestamp is more than 5 minutes away from now");
        }
        byte[] prefix = (id + "." + timestamp + ".").getBytes(StandardCharsets.UTF_8);
        byte[] signed = new byte[prefix.length + body.length];
        System.arraycopy(prefix, 0, signed, 0, prefix.length);
        System.arraycopy(body, 0, signed, prefix.length, body.length);
        for (Map<String, String> jwk : jwks) {
            if (!"OKP".equals(jwk.get("kty")) || !"Ed25519".equals(jwk.get("crv"))) continue;
            PublicKey key = ed25519Key(jwk.get("x"));
            for (String s : headers.getOrDefault("webhook-signature", "").split(" ")) {
                if (!s.startsWith("v1a,")) continue;
                Signature verifier = Signature.getInstance("Ed25519");
                verifier.initVerify(key);
                verifier.update(signed);
                if (verifier.verify(Base64.getDecoder().decode(s.substring(4)))) return;
            }
        }
        throw new SignatureException("no Ed25519 key of the JWKS verifies webhook-signature");
    }

    /**
     * Rabo deliveries: {@code x-smartpay-signature} is a detached ES256 JWS
     * {@code header..signature} over the raw body, signed with the JWKS key of the JWS header's kid.
     */
    static void verifyRabo(List<Map<String, String>> jwks, Map<String, String> headers, byte[] body)
            throws GeneralSecurityException {
        String[] parts = headers.getOrDefault("x-smartpay-signature", "").split("\\.", -1);
        if (parts.length != 3 || !parts[1].isEmpty()) {
            throw new SignatureException("x-smartpay-signature is not a detached JWS");
        }
        Base64.Decoder b64url = Base64.getUrlDecoder();
        Map<String, String> header = strings(new String(b64url.decode(parts[0]), StandardCharsets.UTF_8));
        if (!"ES256".equals(header.get("alg"))) throw new SignatureException("the JWS alg is not ES256");
        String kid = header.getOrDefault("kid", "");
        for (Map<String, String> jwk : jwks) {
            if (!"EC".equals(jwk.get("kty")) || !"P-256".equals(jwk.get("crv"))) continue;
            if (!kid.equals(jwk.get("kid"))) continue;
            String input = parts[0] + "." + Base64.getUrlEncoder().withoutPadding().encodeToString(body);
            // ES256 in a JWS is r || s, which the JDK calls the P1363 format.
            Signature verifier = Signature.getInstance("SHA256withECDSAinP1363Format");
            verifier.initVerify(p256Key(jwk.get("x"), jwk.get("y")));
            verifier.update(input.getBytes(StandardCharsets.US_ASCII));
            if (!verifier.verify(b64url.decode(parts[2]))) {
                throw new SignatureException("the ES256 signature does not verify");
            }
            return;
        }
        throw new SignatureException("kid " + kid + " is not in the JWKS: fetch it again");
    }

    /** An Ed25519 public key from a JWK's x: y little-endian, the top bit of the last byte is x's parity. */
    static PublicKey ed25519Key(String x) throws GeneralSecurityException {
        byte[] bytes = Base64.getUrlDecoder().decode(x);
        if (bytes.length != 32) throw new SignatureException("an Ed25519 key is 32 bytes");
        boolean xOdd = (bytes[31] & 0x80) != 0;
        bytes[31] &= 0x7f;
        byte[] bigEndian = new byte[32];
        for (int i = 0; i < 32; i++) bigEndian[i] = bytes[31 - i];
        EdECPoint point = new EdECPoint(xOdd, new BigInteger(1, bigEndian));
        return KeyFactory.getInstance("Ed25519")
                .generatePublic(new EdECPublicKeySpec(NamedParameterSpec.ED25519, point));
    }

    /** A P-256 public key from a JWK's x and y (big-endian coordinates). */
    static PublicKey p256Key(String x, String y) throws GeneralSecurityException {
        AlgorithmParameters parameters = AlgorithmParameters.getInstance("EC");
        parameters.init(new ECGenParameterSpec("secp256r1"));
        ECPoint point = new ECPoint(
                new BigInteger(1, Base64.getUrlDecoder().decode(x)),
                new BigInteger(1, Base64.getUrlDecoder().decode(y)));
        ECParameterSpec p256 = parameters.getParameterSpec(ECParameterSpec.class);
        return KeyFactory.getInstance("EC").generatePublic(new ECPublicKeySpec(point, p256));
    }

    // The JDK has no JSON parser, and a real receiver uses its own (Jackson, Gson, ...). These
    // inputs are flat objects of plain strings (the JWKS: an array of them), which two regexes
    // read: string members without escapes, and the innermost {...} objects.
    static final Pattern MEMBER = Pattern.compile("\"([^\"\\\\]*)\"\\s*:\\s*\"([^\"\\\\]*)\"");
    static final Pattern OBJECT = Pattern.compile("\\{[^{}]*\\}");

    static Map<String, String> strings(String json) {
        Map<String, String> members = new HashMap<>();
        Matcher m = MEMBER.matcher(json);
        while (m.find()) members.putIfAbsent(m.group(1), m.group(2));
        return members;
    }

    static List<Map<String, String>> keys(String jwks) {
        List<Map<String, String>> keys = new ArrayList<>();
        Matcher m = OBJECT.matcher(jwks);
        while (m.find()) keys.add(strings(m.group()));
        return keys;
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: java Verify.java JWKS_FILE HEADERS_FILE BODY_FILE");
            System.exit(2);
        }
        List<Map<String, String>> jwks = keys(Files.readString(Path.of(args[0])));
        Map<String, String> headers = strings(Files.readString(Path.of(args[1])));
        byte[] body = Files.readAllBytes(Path.of(args[2]));
        try {
            if (headers.containsKey("x-smartpay-signature")) verifyRabo(jwks, headers, body);
            else verifyObp(jwks, headers, body);
        } catch (GeneralSecurityException | RuntimeException e) {
            System.err.println("not verified: " + e);
            System.exit(1);
        }
        System.out.println("verified");
    }
}
