"""The operator's face: the admin API (`/api/v1/admin/...`, bearer `--admin-token-file`) and the
operator commands `discoverd clusters` and `discoverd backup`. Discovery tokens never leave it:
clusters are named by their fingerprint (`discoverd.logs.fingerprint`)."""
