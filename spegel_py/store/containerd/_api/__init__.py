"""Generated containerd API stubs (scripts/gen_protos.sh). Do not edit; private to store.containerd."""
