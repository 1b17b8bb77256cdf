//! The transit engine's route table.

use crate::route::{Field, Ops, Route};

const CONTEXT: Field = Field::str(
    "context",
    "Base64 key-derivation context, for derived keys.",
);
const ASSOCIATED_DATA: Field = Field::str(
    "associated_data",
    "Base64 associated data, authenticated but not encrypted.",
);
const NONCE: Field = Field::str(
    "nonce",
    "Base64 nonce; refused (keyhaven never takes a nonce).",
);
const KEY_VERSION: Field = Field::uint("key_version", "The key version to use (default: latest).");
const BATCH_INPUT: Field = Field::any(
    "batch_input",
    "A list of items, each with the single-item fields; as a JSON array or a JSON string.",
);
const REFERENCE: Field = Field::str("reference", "Echoed back with the item's result.");
const PARTIAL_FAILURE: Field = Field::uint(
    "partial_failure_response_code",
    "The status of a batch in which some items failed (default 400).",
);
const INPUT: Field = Field::str("input", "Base64 input.").required();

const KEY_SETTINGS: &[Field] = &[
    Field::uint(
        "min_decryption_version",
        "The oldest version that may decrypt.",
    ),
    Field::uint(
        "min_encryption_version",
        "The oldest version that may encrypt (0: latest).",
    ),
    Field::bool("deletion_allowed", "Whether the key may be deleted."),
    Field::bool("exportable", "Whether the key may be exported."),
    Field::bool(
        "allow_plaintext_backup",
        "Whether a plaintext backup may be taken.",
    ),
    Field::duration(
        "auto_rotate_period",
        "Rotate automatically this often (0: never; at least 1h).",
    ),
];

const CREATE_FIELDS: &[Field] = &[
    Field::str("type", "The key type.").default("aes256-gcm96"),
    Field::bool("derived", "Derive a key per context."),
    Field::bool(
        "convergent_encryption",
        "Deterministic encryption for a derived key.",
    ),
    Field::bool("exportable", "Whether the key may be exported."),
    Field::bool(
        "allow_plaintext_backup",
        "Whether a plaintext backup may be taken.",
    ),
    Field::duration(
        "auto_rotate_period",
        "Rotate automatically this often (0: never; at least 1h).",
    ),
    Field::uint("key_size", "The size of an HMAC key, in bytes."),
    CONTEXT,
];

const UPSERT_FIELDS: [Field; 2] = [
    Field::str("type", "The type of a key created by this request.").default("aes256-gcm96"),
    Field::bool(
        "convergent_encryption",
        "Convergent encryption for a key created by this request.",
    ),
];

const ENCRYPT_FIELDS: &[Field] = &[
    Field::str("plaintext", "Base64 plaintext.").required(),
    CONTEXT,
    ASSOCIATED_DATA,
    NONCE,
    KEY_VERSION,
    BATCH_INPUT,
    REFERENCE,
    PARTIAL_FAILURE,
    UPSERT_FIELDS[0],
    UPSERT_FIELDS[1],
];

const DECRYPT_FIELDS: &[Field] = &[
    Field::str("ciphertext", "The ciphertext, `vault:v<N>:<base64>`.").required(),
    CONTEXT,
    ASSOCIATED_DATA,
    NONCE,
    BATCH_INPUT,
    REFERENCE,
    PARTIAL_FAILURE,
];

const REWRAP_FIELDS: &[Field] = &[
    Field::str(
        "ciphertext",
        "The ciphertext to re-encrypt with the latest version.",
    )
    .required(),
    CONTEXT,
    ASSOCIATED_DATA,
    NONCE,
    KEY_VERSION,
    BATCH_INPUT,
    REFERENCE,
    PARTIAL_FAILURE,
];

const DATAKEY_FIELDS: &[Field] = &[
    CONTEXT,
    ASSOCIATED_DATA,
    NONCE,
    KEY_VERSION,
    Field::uint("bits", "The data key's size in bits: 128, 256 or 512.").default("256"),
];

const HMAC_FIELDS: &[Field] = &[
    INPUT,
    Field::str("algorithm", "The hash algorithm.").default("sha2-256"),
    Field::str("hash_algorithm", "Same as algorithm."),
    KEY_VERSION,
    BATCH_INPUT,
    REFERENCE,
    PARTIAL_FAILURE,
];

const SIGN_OPTIONS: [Field; 6] = [
    Field::str("hash_algorithm", "The hash algorithm."),
    Field::str("algorithm", "Same as hash_algorithm."),
    Field::str("signature_algorithm", "RSA padding: pss or pkcs1v15.").default("pss"),
    Field::str(
        "marshaling_algorithm",
        "ECDSA signature encoding: asn1 or jws.",
    )
    .default("asn1"),
    Field::str(
        "salt_length",
        "RSA-PSS salt length: auto, hash or a number.",
    ),
    Field::bool("prehashed", "The input is already a hash."),
];

const SIGN_FIELDS: &[Field] = &[
    INPUT,
    CONTEXT,
    KEY_VERSION,
    BATCH_INPUT,
    REFERENCE,
    PARTIAL_FAILURE,
    SIGN_OPTIONS[0],
    SIGN_OPTIONS[1],
    SIGN_OPTIONS[2],
    SIGN_OPTIONS[3],
    SIGN_OPTIONS[4],
    SIGN_OPTIONS[5],
];

const VERIFY_FIELDS: &[Field] = &[
    INPUT,
    CONTEXT,
    Field::str("signature", "The signature to check."),
    Field::str("hmac", "The HMAC to check."),
    Field::str("algorithm", "The HMAC's hash algorithm."),
    BATCH_INPUT,
    REFERENCE,
    PARTIAL_FAILURE,
    SIGN_OPTIONS[0],
    SIGN_OPTIONS[2],
    SIGN_OPTIONS[3],
    SIGN_OPTIONS[4],
    SIGN_OPTIONS[5],
];

const NAME_OPS: Ops = Ops::READ.and(Ops::DELETE);

/// Every path of a transit mount.
pub(super) static ROUTES: &[Route] = &[
    Route::new("keys", "List the keys.").pure(Ops::LIST),
    Route::new("keys/{name}", "Create, read or delete a key.")
        .pure(Ops::READ)
        .ops(Ops::WRITE.and(Ops::DELETE))
        .fields(CREATE_FIELDS)
        // A write creates a key of that very name; an alias name is refused.
        .alias_capture("name", NAME_OPS),
    Route::new("keys/{name}/config", "Change a key's settings.")
        .ops(Ops::WRITE)
        .fields(KEY_SETTINGS)
        .alias_capture("name", Ops::WRITE),
    Route::new("keys/{name}/rotate", "Add a new latest version.")
        .ops(Ops::WRITE)
        .alias_capture("name", Ops::WRITE),
    Route::new("keys/{name}/trim", "Delete versions older than a minimum.")
        .ops(Ops::WRITE)
        .fields(&[Field::uint("min_available_version", "The oldest version to keep.").required()])
        .alias_capture("name", Ops::WRITE),
    Route::new(
        "keys/{name}/disable",
        "Refuse every cryptographic use of the key.",
    )
    .ops(Ops::WRITE)
    .alias_capture("name", Ops::WRITE),
    Route::new("keys/{name}/enable", "Allow the key's use again.")
        .ops(Ops::WRITE)
        .alias_capture("name", Ops::WRITE),
    Route::new(
        "keys/{name}/schedule-deletion",
        "Destroy the key after a waiting period.",
    )
    .ops(Ops::WRITE)
    .fields(&[
        Field::uint("pending_window_days", "Days before destruction, 7 to 30.").default("30"),
    ])
    .alias_capture("name", Ops::WRITE),
    Route::new(
        "keys/{name}/cancel-deletion",
        "Cancel a scheduled deletion; the key stays disabled.",
    )
    .ops(Ops::WRITE)
    .alias_capture("name", Ops::WRITE),
    Route::new("aliases", "List the aliases.").pure(Ops::LIST),
    Route::new("aliases/{alias}", "Another name for a key.")
        .pure(Ops::READ)
        .ops(Ops::WRITE.and(Ops::DELETE))
        .fields(&[Field::str("key", "The key the alias names.").required()]),
    Route::new("config/keys", "Mount settings.")
        .pure(Ops::READ)
        .ops(Ops::WRITE)
        .fields(&[Field::bool(
            "disable_upsert",
            "Refuse to create keys on encrypt.",
        )]),
    Route::new(
        "encrypt/{name}",
        "Encrypt with a key (creating it if missing and allowed).",
    )
    .ops(Ops::WRITE)
    .standby(Ops::WRITE)
    .fields(ENCRYPT_FIELDS)
    .alias_capture("name", Ops::WRITE),
    Route::new("decrypt/{name}", "Decrypt with a key.")
        .ops(Ops::WRITE)
        .standby(Ops::WRITE)
        .fields(DECRYPT_FIELDS)
        .alias_capture("name", Ops::WRITE),
    Route::new(
        "rewrap/{name}",
        "Re-encrypt a ciphertext with the key's latest version.",
    )
    .ops(Ops::WRITE)
    .standby(Ops::WRITE)
    .fields(REWRAP_FIELDS)
    .alias_capture("name", Ops::WRITE),
    Route::new(
        "datakey/{plaintext}/{name}",
        "Generate a data key, wrapped and optionally in plaintext.",
    )
    .ops(Ops::WRITE)
    .standby(Ops::WRITE)
    .fields(DATAKEY_FIELDS)
    .alias_capture("name", Ops::WRITE),
    Route::new("hmac/{name}/{urlalgorithm?}", "HMAC with a key.")
        .ops(Ops::WRITE)
        .standby(Ops::WRITE)
        .fields(HMAC_FIELDS)
        .alias_capture("name", Ops::WRITE),
    Route::new("sign/{name}/{urlalgorithm?}", "Sign with a key.")
        .ops(Ops::WRITE)
        .standby(Ops::WRITE)
        .fields(SIGN_FIELDS)
        .alias_capture("name", Ops::WRITE),
    Route::new(
        "verify/{name}/{urlalgorithm?}",
        "Verify a signature or HMAC.",
    )
    .ops(Ops::WRITE)
    .standby(Ops::WRITE)
    .fields(VERIFY_FIELDS)
    .alias_capture("name", Ops::WRITE),
    Route::new("random/{source?}/{urlbytes?}", "Random bytes.")
        .ops(Ops::WRITE)
        .standby(Ops::WRITE)
        .fields(&[
            Field::uint("bytes", "How many bytes.").default("32"),
            Field::str("format", "base64 or hex.").default("base64"),
            Field::str("source", "platform, seal or all."),
        ]),
    Route::new("hash/{urlalgorithm?}", "Hash the input.")
        .ops(Ops::WRITE)
        .standby(Ops::WRITE)
        .fields(&[
            INPUT,
            Field::str("algorithm", "The hash algorithm.").default("sha2-256"),
            Field::str("format", "hex or base64.").default("hex"),
        ]),
];
