"""Call an agentmesh agent over mTLS with Python's standard library only.

usage: client.py URL CERT KEY BUNDLE   (the AGENTMESH_*_FILE paths)

The certificate is verified against bundle.pem; host names are not checked
(agents are named by SPIFFE IDs, not DNS), so the server's SPIFFE ID is read
from its URI SAN and printed. A real client compares it with the ID it
expects, or with the egress rules of policy.json.
"""
import http.client
import ssl
import sys
import urllib.parse

url, cert, key, bundle = sys.argv[1:5]

ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=bundle)
ctx.check_hostname = False                  # identities are SPIFFE IDs, not host names
ctx.verify_mode = ssl.CERT_REQUIRED          # ...but the chain must verify
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.load_cert_chain(cert, key)               # present our own identity

u = urllib.parse.urlsplit(url)
conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=10)
conn.request("GET", u.path or "/")
resp = conn.getresponse()
body = resp.read().decode()

sans = conn.sock.getpeercert().get("subjectAltName", ())
spiffe_ids = [v for (k, v) in sans if k == "URI" and v.startswith("spiffe://")]
if len(spiffe_ids) != 1:
    sys.exit("the server has no single SPIFFE ID: %r" % (sans,))
print("server spiffe ID:", spiffe_ids[0])
print("status:", resp.status)
print(body.replace('":"', '": "'))
