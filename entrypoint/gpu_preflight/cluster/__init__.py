"""Beyond one machine: GPU node pools (a file, --simulate, or the cluster's own node labels),
each planned with the same probe and plan types as one machine, and the Kubernetes manifests
written from those plans (a Deployment per pool whose one node holds the model, a
LeaderWorkerSet across the nodes of a pool where none does)."""
