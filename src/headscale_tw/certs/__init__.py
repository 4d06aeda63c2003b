"""
Certificates: the built-in ACME client (Let's Encrypt or any ACME server) for
the server's own name, and the TLS listener whose certificate can change while
it runs.
"""
