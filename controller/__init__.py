"""The controller: policies in a database, the REST API, tokens and the audit trail."""
