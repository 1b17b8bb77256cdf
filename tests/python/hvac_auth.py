"""The userpass, cert and approle auth methods through hvac, against a keyhaven server on TLS.

Usage: hvac_auth.py ADDR SERVER_CA ROOT_TOKEN CLIENT_CA CLIENT_CERT CLIENT_KEY

Every step asserts what a user of hvac relies on; the script prints one line per step
and exits non-zero at the first failure.
"""

import sys

import hvac
import hvac.exceptions


def main() -> None:
    addr, server_ca, root, client_ca, client_cert, client_key = sys.argv[1:7]
    admin = hvac.Client(url=addr, token=root, verify=server_ca)
    assert admin.is_authenticated(), "the root token is not accepted"
    admin.sys.create_or_update_policy(
        name="web", policy='path "secret/data/web/*" { capabilities = ["read"] }'
    )

    # userpass
    admin.sys.enable_auth_method(method_type="userpass")
    admin.auth.userpass.create_or_update_user(
        username="alice", password="first-Pa55", policies=["web"]
    )
    user = admin.auth.userpass.read_user(username="alice")
    assert user["data"]["token_policies"] == ["web"], user
    assert "password" not in user["data"], user
    print("userpass: create_or_update_user, read_user")

    person = hvac.Client(url=addr, verify=server_ca)
    login = person.auth.userpass.login(username="alice", password="first-Pa55")
    assert login["auth"]["metadata"] == {"username": "alice"}, login
    assert person.token == login["auth"]["client_token"]
    me = person.auth.token.lookup_self()["data"]
    assert me["policies"] == ["default", "web"], me
    print("userpass: login, token works with the user's policies")

    try:
        hvac.Client(url=addr, verify=server_ca).auth.userpass.login(
            username="alice", password="wrong"
        )
        raise AssertionError("a wrong password logged in")
    except hvac.exceptions.InvalidRequest as e:
        assert "invalid username or password" in str(e), e
    print("userpass: a wrong password is refused")

    admin.auth.userpass.update_password_on_user(username="alice", password="second-Pa55")
    try:
        hvac.Client(url=addr, verify=server_ca).auth.userpass.login(
            username="alice", password="first-Pa55"
        )
        raise AssertionError("the old password still works")
    except hvac.exceptions.InvalidRequest:
        pass
    hvac.Client(url=addr, verify=server_ca).auth.userpass.login(
        username="alice", password="second-Pa55"
    )
    users = admin.auth.userpass.list_user()["data"]["keys"]
    assert users == ["alice"], users
    admin.auth.userpass.delete_user(username="alice")
    print("userpass: password change, list_user, delete_user")

    # cert
    admin.sys.enable_auth_method(method_type="cert")
    with open(client_ca, encoding="utf-8") as f:
        ca_pem = f.read()
    admin.auth.cert.create_ca_certificate_role(
        name="web",
        certificate=ca_pem,
        allowed_common_names=["*.example.com"],
        token_policies=["web"],
    )
    role = admin.auth.cert.read_ca_certificate_role(name="web")["data"]
    assert role["allowed_common_names"] == ["*.example.com"], role
    assert role["token_policies"] == ["web"], role
    print("cert: create_ca_certificate_role, read_ca_certificate_role")

    machine = hvac.Client(url=addr, verify=server_ca)
    login = machine.auth.cert.login(
        name="web", cert_pem=client_cert, key_pem=client_key
    )
    assert login["auth"]["metadata"]["cert_name"] == "web", login
    assert machine.token == login["auth"]["client_token"]
    me = machine.auth.token.lookup_self()["data"]
    assert me["policies"] == ["default", "web"], me
    print("cert: login, token works with the role's policies")

    try:
        hvac.Client(url=addr, verify=server_ca).write_data("auth/cert/login", data={"name": "web"})
        raise AssertionError("a login without a client certificate succeeded")
    except hvac.exceptions.InvalidRequest as e:
        assert "no client certificate found" in str(e), e
    print("cert: a login without a certificate is refused")

    # approle
    admin.sys.enable_auth_method(method_type="approle")
    admin.auth.approle.create_or_update_approle(
        role_name="ci", token_policies=["web"], token_ttl="20m", secret_id_num_uses=2
    )
    role = admin.auth.approle.read_role(role_name="ci")["data"]
    assert role["token_policies"] == ["web"], role
    assert role["bind_secret_id"] is True, role
    assert role["secret_id_num_uses"] == 2, role
    assert admin.auth.approle.list_roles()["data"]["keys"] == ["ci"]
    role_id = admin.auth.approle.read_role_id(role_name="ci")["data"]["role_id"]
    generated = admin.auth.approle.generate_secret_id(
        role_name="ci", metadata={"pipeline": "nightly"}
    )["data"]
    secret_id = generated["secret_id"]
    accessors = admin.auth.approle.list_secret_id_accessors(role_name="ci")["data"]["keys"]
    assert accessors == [generated["secret_id_accessor"]], accessors
    looked = admin.auth.approle.read_secret_id(role_name="ci", secret_id=secret_id)["data"]
    assert looked["metadata"] == {"pipeline": "nightly"}, looked
    assert looked["secret_id_num_uses"] == 2, looked
    print("approle: create_or_update_approle, read_role_id, generate_secret_id, lookups")

    machine = hvac.Client(url=addr, verify=server_ca)
    login = machine.auth.approle.login(role_id=role_id, secret_id=secret_id)
    assert login["auth"]["metadata"] == {"role_name": "ci", "pipeline": "nightly"}, login
    assert login["auth"]["lease_duration"] == 1200, login
    assert machine.token == login["auth"]["client_token"]
    me = machine.auth.token.lookup_self()["data"]
    assert me["policies"] == ["default", "web"], me
    print("approle: login, token works with the role's policies")

    hvac.Client(url=addr, verify=server_ca).auth.approle.login(
        role_id=role_id, secret_id=secret_id
    )
    try:
        hvac.Client(url=addr, verify=server_ca).auth.approle.login(
            role_id=role_id, secret_id=secret_id
        )
        raise AssertionError("a used-up secret id logged in")
    except hvac.exceptions.InvalidRequest as e:
        assert "invalid role or secret ID" in str(e), e
    other = admin.auth.approle.generate_secret_id(role_name="ci")["data"]["secret_id"]
    admin.auth.approle.destroy_secret_id(role_name="ci", secret_id=other)
    try:
        hvac.Client(url=addr, verify=server_ca).auth.approle.login(
            role_id=role_id, secret_id=other
        )
        raise AssertionError("a destroyed secret id logged in")
    except hvac.exceptions.InvalidRequest as e:
        assert "invalid role or secret ID" in str(e), e
    print("approle: a used-up or destroyed secret id is refused")


if __name__ == "__main__":
    main()
