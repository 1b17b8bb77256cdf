# The keyhaven policy of the plugin's token: read the key's versions, wrap and unwrap with
# it. Nothing else (in particular no rotate, config or delete on the key).
path "transit/keys/k8s-etcd" {
  capabilities = ["read"]
}
path "transit/encrypt/k8s-etcd" {
  capabilities = ["update"]
}
path "transit/decrypt/k8s-etcd" {
  capabilities = ["update"]
}
