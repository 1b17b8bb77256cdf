"""Cases run with hvac against a keyhaven server, one per invocation.

Usage: python hvac_cases.py CASE

The server's address and a root token come from KEYHAVEN_ADDR and KEYHAVEN_TOKEN. A case
prints one JSON object of observations on standard output; the Rust test that ran it
(crates/keyhaven-cli/tests/hvac.rs) asserts on them. A case that raises exits non-zero
with the traceback on standard error. To add a case, write a function `case_<name>(env)`
returning a dict, and call it from a Rust test with `run_case("<name>", …)`.
"""

import json
import os
import sys

import hvac
import hvac.exceptions


class Env:
    def __init__(self):
        self.addr = os.environ["KEYHAVEN_ADDR"]
        self.token = os.environ["KEYHAVEN_TOKEN"]

    def client(self, token=None):
        return hvac.Client(url=self.addr, token=token or self.token, timeout=30)


def failure(call):
    """The exception class and message of a call expected to fail, or None."""
    try:
        call()
    except hvac.exceptions.VaultError as e:
        return {"error": type(e).__name__, "message": str(e)}
    return None


def case_wrapping(env):
    """Response wrapping through hvac: wrapped reads and writes, sys.wrap, sys.unwrap."""
    client = env.client()
    out = {}
    client.secrets.kv.v2.create_or_update_secret(
        path="hvac/app", secret={"password": "HV-wrapped-1"}, mount_point="secret"
    )
    # A wrapped read: the secret is not in the answer, a wrapping token is.
    wrapped = client.read("secret/data/hvac/app", wrap_ttl="60s")
    out["wrapped_read_data"] = wrapped.get("data")
    info = wrapped["wrap_info"]
    out["wrapped_read_ttl"] = info["ttl"]
    out["wrapped_read_creation_path"] = info["creation_path"]
    unwrapped = client.sys.unwrap(info["token"])
    out["unwrapped_password"] = unwrapped["data"]["data"]["password"]
    out["second_unwrap"] = failure(lambda: client.sys.unwrap(info["token"]))

    # sys/wrapping/wrap, unwrapped with the wrapping token as the client's token.
    wrapped = client.sys.wrap(payload={"app": "billing", "key": "HV-2"}, ttl=120)
    out["wrap_ttl"] = wrapped["wrap_info"]["ttl"]
    holder = env.client(token=wrapped["wrap_info"]["token"])
    out["unwrapped_as_client_token"] = holder.sys.unwrap()["data"]
    out["second_unwrap_as_client_token"] = failure(lambda: holder.sys.unwrap())

    # A wrapped write: a token created under wrapping comes out of the unwrap.
    created = client.write_data(
        "auth/token/create", data={"policies": ["default"]}, wrap_ttl="60s"
    )
    info = created["wrap_info"]
    out["create_auth"] = created.get("auth")
    auth = client.sys.unwrap(info["token"])["auth"]
    out["wrapped_accessor_matches"] = info.get("wrapped_accessor") == auth["accessor"]
    out["unwrapped_token_is_authenticated"] = env.client(
        token=auth["client_token"]
    ).is_authenticated()

    # The cubbyhole, through the generic read and write.
    client.write_data("cubbyhole/hvac", data={"note": "HV-cubby"})
    out["cubbyhole_read"] = client.read("cubbyhole/hvac")["data"]
    out["cubbyhole_list"] = client.adapter.list("/v1/cubbyhole")["data"]["keys"]
    return out


def case_listing(env):
    """Client.list (GET with list=True), and a client configured for a namespace."""
    client = env.client()
    for path in ("team/a", "team/b", "team/sub/c"):
        client.secrets.kv.v2.create_or_update_secret(
            path=path, secret={"k": "v"}, mount_point="secret"
        )
    out = {}
    out["list"] = client.list("secret/metadata/team")["data"]["keys"]
    out["list_missing"] = client.list("secret/metadata/nothing-here")
    out["kv2_list"] = client.secrets.kv.v2.list_secrets(path="team", mount_point="secret")[
        "data"
    ]["keys"]
    scoped = hvac.Client(url=env.addr, token=env.token, namespace="team-a", timeout=30)
    out["namespaced_read"] = failure(
        lambda: scoped.secrets.kv.v2.read_secret_version(path="team/a", mount_point="secret")
    )
    return out


CASES = {name[len("case_"):]: f for name, f in globals().items() if name.startswith("case_")}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        print(f"usage: hvac_cases.py {{{'|'.join(sorted(CASES))}}}", file=sys.stderr)
        return 2
    print(json.dumps(CASES[sys.argv[1]](Env()), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
