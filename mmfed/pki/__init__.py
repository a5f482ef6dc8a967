"""Deployment PKI: the CA, the SuperLink TLS certificate and SuperNode authentication keys."""
