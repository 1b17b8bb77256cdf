//! The PostgreSQL plugin of the `database/` engine on the machine's PostgreSQL: OpenBao's
//! default revocation (privileges in any schema, then the role; a second revocation of a
//! gone user succeeds), and errors that never quote the password. Run when
//! `KEYHAVEN_TEST_PG` is set (a connection string, or `1` for the local default).

use keyhaven_engine::database::plugin::{ConnectionConfig, PasswordAuthentication, SecretText};
use keyhaven_server::database_pg;
use tokio_postgres::NoTls;

// Saying that the tests were skipped is the point of this message.
#[allow(clippy::print_stderr)]
fn admin_url() -> Option<String> {
    match std::env::var("KEYHAVEN_TEST_PG") {
        Ok(v) if v == "1" => Some("host=127.0.0.1 user=postgres dbname=postgres".to_owned()),
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            eprintln!("KEYHAVEN_TEST_PG is not set: PostgreSQL tests not run");
            None
        }
    }
}

async fn client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

async fn role_exists(admin: &tokio_postgres::Client, user: &str) -> bool {
    admin
        .query_one(
            "SELECT exists(SELECT 1 FROM pg_roles WHERE rolname = $1)",
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn default_revocation_drops_a_user_with_grants_in_any_schema_and_is_idempotent() {
    let Some(admin_url) = admin_url() else { return };
    let admin = client(&admin_url).await;
    let db = format!("kh_dbpg_{}", std::process::id());
    for sql in [
        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        format!("CREATE DATABASE {db}"),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    let db_url = format!("host=127.0.0.1 user=postgres dbname={db}");
    client(&db_url)
        .await
        .batch_execute(
            "CREATE SCHEMA app; CREATE TABLE app.t (id int); CREATE TABLE public.p (id int)",
        )
        .await
        .unwrap();
    let conn = database_pg::shared()
        .open(&ConnectionConfig {
            plugin_name: database_pg::PLUGIN_NAME.to_owned(),
            url: SecretText::new(db_url.clone()),
            max_open_connections: 2,
            max_connection_lifetime: 0,
            password_authentication: PasswordAuthentication::ScramSha256,
        })
        .await
        .unwrap();
    conn.verify().await.unwrap();
    let user = format!("v-test-{}", std::process::id());
    let password = SecretText::new("Plain-Password-Under-Test-1".to_owned());
    conn.create_user(
        &["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; \
           GRANT USAGE ON SCHEMA app TO \"{{name}}\"; GRANT SELECT ON app.t TO \"{{name}}\"; \
           GRANT SELECT ON public.p TO \"{{name}}\"".to_owned()],
        &user,
        &password,
        "2099-01-01 00:00:00+0000",
    )
    .await
    .unwrap();
    // scram-sha-256: PostgreSQL stored the verifier made here.
    let stored: String = admin
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored.starts_with("SCRAM-SHA-256$4096:"), "{stored}");

    // A statement that leaves the password unquoted: PostgreSQL's error quotes it as a
    // token, and the plugin's error does not carry it.
    let plain = database_pg::shared()
        .open(&ConnectionConfig {
            plugin_name: database_pg::PLUGIN_NAME.to_owned(),
            url: SecretText::new(db_url.clone()),
            max_open_connections: 1,
            max_connection_lifetime: 0,
            password_authentication: PasswordAuthentication::Password,
        })
        .await
        .unwrap();
    let err = plain
        .set_password(
            &["ALTER ROLE \"{{username}}\" WITH PASSWORD {{password}} x".to_owned()],
            &user,
            &SecretText::new("Unquotedpasswordtoken7".to_owned()),
        )
        .await
        .unwrap_err();
    assert!(err.message.contains("syntax error"), "{err}");
    assert!(!err.message.contains("Unquotedpasswordtoken7"), "{err}");
    assert!(err.message.contains("<redacted>"), "{err}");
    plain.close().await;

    assert!(role_exists(&admin, &user).await);
    conn.revoke_user(&[], &user).await.unwrap();
    assert!(!role_exists(&admin, &user).await);
    // Already gone: still a success.
    conn.revoke_user(&[], &user).await.unwrap();
    conn.close().await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await
        .unwrap();
}
