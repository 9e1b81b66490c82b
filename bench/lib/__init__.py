"""Building blocks of the benchmarks: blobs, servers, client, cgroup and /proc sampling."""
