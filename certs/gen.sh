#!/usr/bin/env sh
# Regenerates the development/test TLS material in this folder:
#   ca.pem      a private dev CA (its key is thrown away after signing)
#   server.pem  a server leaf signed by that CA, SANs: DNS:localhost, IP:127.0.0.1, IP:::1
#   server.key  the leaf's private key (PKCS#8, EC P-256)
# Everything is valid for 10 years. NEVER use these files in production.
#
# Usage: certs/gen.sh            (needs the openssl CLI; run from anywhere)
set -eu

cd "$(dirname "$0")"
DAYS=3650
command -v openssl >/dev/null 2>&1 || { echo "gen.sh: the openssl CLI is required" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# 1. The dev CA (self-signed root). Its key lives only in $tmp.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/ca.key"
cat > "$tmp/ca.ext" <<'EXT'
basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
EXT
openssl req -new -key "$tmp/ca.key" -subj "/O=llm-tracer/CN=llm-tracer development CA (NOT FOR PRODUCTION)" \
    -out "$tmp/ca.csr"
openssl x509 -req -in "$tmp/ca.csr" -key "$tmp/ca.key" -sha256 -days "$DAYS" \
    -set_serial "0x$(openssl rand -hex 16)" -extfile "$tmp/ca.ext" -out ca.pem

# 2. The server leaf, signed by the CA.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server.key
cat > "$tmp/leaf.ext" <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EXT
openssl req -new -key server.key -subj "/O=llm-tracer/CN=localhost" -out "$tmp/server.csr"
openssl x509 -req -in "$tmp/server.csr" -CA ca.pem -CAkey "$tmp/ca.key" -sha256 -days "$DAYS" \
    -set_serial "0x$(openssl rand -hex 16)" -extfile "$tmp/leaf.ext" -out server.pem
chmod 644 server.key

# 3. Sanity check: the leaf verifies against the CA for both names.
openssl verify -CAfile ca.pem -verify_hostname localhost server.pem >/dev/null
openssl verify -CAfile ca.pem -verify_ip 127.0.0.1 server.pem >/dev/null
echo "gen.sh: wrote ca.pem, server.pem, server.key in $(pwd)" >&2
