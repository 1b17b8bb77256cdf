//! The one error type of the client.

use std::path::PathBuf;

/// Why a call failed.
///
/// Transport failures (the server could not be reached, TLS failed, the request timed out)
/// are [`ClientError::Transport`]; answers of the server that report an error are
/// [`ClientError::Api`], with the HTTP status and the server's `errors` list.
///
/// No variant holds the token or a request body, and response bodies are never quoted:
/// the messages are safe to print and log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server address is not an absolute `http` or `https` URL.
    #[error("invalid server address {address:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The CA certificate file could not be read.
    #[error("cannot read CA certificate {path}: {source}")]
    CaCertRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The CA certificate file holds no usable PEM certificate.
    #[error("invalid CA certificate {path}: {source}")]
    CaCertParse {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: reqwest::Error,
    },
    /// The file holds no certificate at all.
    #[error("no PEM certificate found in {path}")]
    CaCertEmpty {
        /// The file.
        path: PathBuf,
    },
    /// The token has characters that cannot go into an HTTP header.
    #[error("the token contains characters that are not allowed in an HTTP header")]
    InvalidToken,
    /// The HTTP client could not be built (TLS setup).
    #[error("cannot set up the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
    /// An API path is not acceptable (empty, or with a `.`/`..` segment).
    #[error("invalid API path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The request did not get an HTTP answer: connection, TLS, timeout or body read.
    #[error("{method} {path}: {source}")]
    Transport {
        /// The HTTP method.
        method: &'static str,
        /// The API path, relative to `/v1/`.
        path: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("{method} {path}: HTTP {status}{}", format_errors(.errors))]
    Api {
        /// The HTTP method.
        method: &'static str,
        /// The API path, relative to `/v1/`.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The server's `errors` list (may be empty).
        errors: Vec<String>,
    },
    /// The server's answer is not the JSON this call expects.
    #[error("{method} {path}: unexpected response (HTTP {status}): cannot decode {expected}")]
    Decode {
        /// The HTTP method.
        method: &'static str,
        /// The API path, relative to `/v1/`.
        path: String,
        /// The HTTP status.
        status: u16,
        /// What the call expected. The decoder's own message is not kept: it can quote
        /// values of the response, and those may be secrets.
        expected: &'static str,
    },
}

fn format_errors(errors: &[String]) -> String {
    match errors {
        [] => String::new(),
        [one] => format!(": {one}"),
        many => format!(": {}", many.join("; ")),
    }
}

impl ClientError {
    /// The HTTP status of an API or decode error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's `errors` list (empty unless this is an API error).
    pub fn api_errors(&self) -> &[String] {
        match self {
            ClientError::Api { errors, .. } => errors,
            _ => &[],
        }
    }

    /// Whether the server answered 404.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Whether the request got no HTTP answer at all.
    pub fn is_transport(&self) -> bool {
        matches!(self, ClientError::Transport { .. })
    }

    /// Whether the server answered with an error status.
    pub fn is_api(&self) -> bool {
        matches!(self, ClientError::Api { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_lists_the_server_messages() {
        let e = ClientError::Api {
            method: "GET",
            path: "secret/data/a".into(),
            status: 400,
            errors: vec!["one".into(), "two".into()],
        };
        assert_eq!(e.to_string(), "GET secret/data/a: HTTP 400: one; two");
        assert_eq!(e.status(), Some(400));
        assert!(e.is_api() && !e.is_transport() && !e.is_not_found());
        let e = ClientError::Api {
            method: "GET",
            path: "p".into(),
            status: 404,
            errors: vec![],
        };
        assert_eq!(e.to_string(), "GET p: HTTP 404");
        assert!(e.is_not_found());
    }
}
