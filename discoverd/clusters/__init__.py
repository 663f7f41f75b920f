"""The cluster API (`/api/v1/clusters/...`): the member API and the JSON view of a cluster."""
