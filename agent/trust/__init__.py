"""Who may command the site: Ed25519-signed commands (JWS), the keys the site trusts, replay protection, and the
agent's own key that signs what it publishes. The format and the threat model are in docs/security.md."""
