"""Deployment security: certificates and keys."""
