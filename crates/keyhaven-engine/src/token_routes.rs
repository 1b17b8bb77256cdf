//! The `auth/token/` mount's route table.

use crate::route::{Field, FieldType, Ops, Route};

const CREATE_FIELDS: &[Field] = &[
    Field::str("id", "The token's value (root only)."),
    Field::str_list("policies", "Policies, within the caller's or the role's."),
    Field::new(
        "meta",
        FieldType::StrMap,
        "Metadata, shown by lookups; not secret.",
    ),
    Field::bool("no_parent", "Create an orphan (needs sudo)."),
    Field::bool("no_default_policy", "Leave out the default policy."),
    Field::bool("renewable", "Whether the token can be renewed.").default("true"),
    Field::duration("ttl", "Time to live."),
    Field::str("type", "service or default-service."),
    Field::duration(
        "explicit_max_ttl",
        "A maximum TTL that renewal never passes.",
    ),
    Field::str("display_name", "A name for humans."),
    Field::uint(
        "num_uses",
        "Uses before the token is revoked (0: unlimited).",
    ),
    Field::duration("period", "Make the token periodic (needs sudo)."),
];

const TOKEN: Field = Field::str("token", "The token.");
const ACCESSOR: Field = Field::str("accessor", "The token's accessor.");
const INCREMENT: Field = Field::duration("increment", "The TTL asked for.");

const ROLE_FIELDS: &[Field] = &[
    Field::str_list("allowed_policies", "Policies tokens of this role may have."),
    Field::str_list(
        "disallowed_policies",
        "Policies tokens of this role may not have.",
    ),
    Field::bool("orphan", "Tokens of this role are orphans."),
    Field::str("path_suffix", "Appended to the tokens' path."),
    Field::bool("renewable", "Whether the tokens can be renewed.").default("true"),
    Field::duration("period", "Deprecated: token_period."),
    Field::duration("token_period", "Make the tokens periodic."),
    Field::duration("explicit_max_ttl", "Deprecated: token_explicit_max_ttl."),
    Field::duration(
        "token_explicit_max_ttl",
        "A maximum TTL that renewal never passes.",
    ),
];

/// Every path of the `auth/token/` mount.
pub(crate) static ROUTES: &[Route] = &[
    Route::new("create", "Create a child token.")
        .ops(Ops::WRITE)
        .fields(CREATE_FIELDS),
    Route::new("create-orphan", "Create an orphan token.")
        .ops(Ops::WRITE)
        .fields(CREATE_FIELDS)
        .sudo(),
    Route::new("create/{role_name}", "Create a token with a role.")
        .ops(Ops::WRITE)
        .fields(CREATE_FIELDS),
    Route::new("lookup", "Look up a token.")
        .pure(Ops::READ)
        .ops(Ops::WRITE)
        .fields(&[TOKEN]),
    Route::new("lookup-self", "Look up the calling token.")
        .pure(Ops::READ)
        .ops(Ops::WRITE)
        .fields(&[TOKEN]),
    Route::new("lookup-accessor", "Look up a token by accessor.")
        .ops(Ops::WRITE)
        .fields(&[ACCESSOR]),
    Route::new("renew", "Renew a token.")
        .ops(Ops::WRITE)
        .fields(&[TOKEN, INCREMENT]),
    Route::new("renew-self", "Renew the calling token.")
        .ops(Ops::WRITE)
        .fields(&[TOKEN, INCREMENT]),
    Route::new("renew-accessor", "Renew a token by accessor.")
        .ops(Ops::WRITE)
        .fields(&[ACCESSOR, INCREMENT]),
    Route::new("revoke", "Revoke a token and its children.")
        .ops(Ops::WRITE)
        .fields(&[TOKEN]),
    Route::new("revoke-self", "Revoke the calling token and its children.").ops(Ops::WRITE),
    Route::new("revoke-accessor", "Revoke a token by accessor.")
        .ops(Ops::WRITE)
        .fields(&[ACCESSOR]),
    Route::new(
        "revoke-orphan",
        "Revoke a token, making its children orphans.",
    )
    .ops(Ops::WRITE)
    .fields(&[TOKEN])
    .sudo(),
    Route::new("tidy", "Remove expired tokens now.").ops(Ops::WRITE),
    Route::new("roles", "List the token roles.").pure(Ops::LIST),
    Route::new("roles/{role_name}", "A token role.")
        .pure(Ops::READ)
        .ops(Ops::WRITE.and(Ops::DELETE))
        .fields(ROLE_FIELDS),
];
