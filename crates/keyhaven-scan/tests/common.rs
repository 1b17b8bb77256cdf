//! Helpers shared by the integration tests: fake credential generators (built at run time,
//! so no well-formed credential is ever committed) and a command-line runner.

use keyhaven_scan::validate::base62_crc32;

/// Marker that breaks tokens in committed files; stripped before scanning.
pub const BREAK: &str = "‹›";

/// Expand a rule example: strip the break marker and compute `@crc@` checksums over the
/// 30 characters before the marker (plus the prefix for keyhaven tokens).
pub fn expand_example(s: &str) -> String {
    let mut out = s.replace(BREAK, "");
    while let Some(pos) = out.find("@crc@") {
        let before = &out[..pos];
        let body_start = pos - 30;
        let body = &before[body_start..];
        let covered =
            if before[..body_start].ends_with("khs.") || before[..body_start].ends_with("khb.") {
                &before[body_start - 4..]
            } else {
                body
            };
        let sum = base62_crc32(covered.as_bytes());
        out.replace_range(pos..pos + 5, &sum);
    }
    out
}

/// A small deterministic generator (xorshift64*), so fakes differ per seed but tests are
/// reproducible.
pub struct Fake(u64);

const ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

impl Fake {
    pub fn new(seed: u64) -> Fake {
        Fake(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn from(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize] as char)
            .collect()
    }
    pub fn alnum(&mut self, n: usize) -> String {
        self.from(ALNUM, n)
    }
    pub fn hex(&mut self, n: usize) -> String {
        self.from(b"0123456789abcdef", n)
    }
    pub fn b64(&mut self, n: usize) -> String {
        self.from(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
            n,
        )
    }

    /// A fake credential of `kind`, format-valid (checksums included).
    pub fn credential(&mut self, kind: &str) -> String {
        match kind {
            "github" => {
                let body = self.alnum(30);
                format!("ghp_{body}{}", base62_crc32(body.as_bytes()))
            }
            "npm" => {
                let body = self.alnum(30);
                format!("npm_{body}{}", base62_crc32(body.as_bytes()))
            }
            "keyhaven" => {
                let head = format!("khs.{}", self.alnum(30));
                let sum = base62_crc32(head.as_bytes());
                format!("{head}{sum}")
            }
            "aws-id" => format!("AKIA{}", self.from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)),
            "aws-secret" => loop {
                let s = self.b64(40);
                if s.bytes().any(|b| b.is_ascii_uppercase())
                    && s.bytes().any(|b| b.is_ascii_lowercase())
                    && s.bytes().any(|b| b.is_ascii_digit())
                {
                    break s;
                }
            },
            "alibaba-id" => format!("LTAI{}", self.alnum(20)),
            "alibaba-secret" => self.alnum(30),
            "gcp-api" => format!(
                "AIza{}",
                self.from(
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
                    35
                )
            ),
            "azure-storage" => format!(
                "{}==",
                self.from(
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
                    86
                )
            ),
            "azure-client" => format!("{}8Q~{}", self.alnum(3), self.alnum(34)),
            "gitlab" => format!("glpat-{}", self.alnum(20)),
            "pypi" => format!("pypi-AgEIcHlwaS5vcmc{}", self.alnum(70)),
            "slack" => format!(
                "xoxb-{}-{}-{}",
                self.from(b"0123456789", 11),
                self.from(b"0123456789", 13),
                self.alnum(24)
            ),
            "slack-webhook" => format!(
                "https://hooks.slack.com/services/T{}/B{}/{}",
                self.from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 8),
                self.from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 10),
                self.alnum(24)
            ),
            "stripe" => format!("sk_live_{}", self.alnum(24)),
            "twilio" => format!("SK{}", self.hex(32)),
            "sendgrid" => format!("SG.{}.{}", self.alnum(22), self.alnum(43)),
            "mailgun" => format!("key-{}", self.hex(32)),
            "openai" => format!("sk-proj-{}T3BlbkFJ{}", self.alnum(40), self.alnum(40)),
            "vault" => format!("hvs.{}", self.alnum(90)),
            "jwt" => format!(
                "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ{}.{}",
                self.alnum(40),
                self.from(
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
                    43
                )
            ),
            "password" => format!("{}#{}!{}", self.alnum(5), self.alnum(4), self.alnum(3)),
            "pem-body" => {
                let mut s = String::new();
                for _ in 0..6 {
                    s.push_str(&self.b64(64));
                    s.push('\n');
                }
                s
            }
            other => panic!("unknown fake kind {other}"),
        }
    }
}

/// Run the command line in process.
pub fn run(args: &[&str], stdin: &[u8]) -> (u8, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut input = stdin;
    let code =
        keyhaven_scan::cli::run_with_args(args.iter().copied(), &mut input, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

/// The built-in engine with default options.
pub fn engine() -> keyhaven_scan::engine::Engine {
    keyhaven_scan::engine::Engine::new(
        keyhaven_scan::rules::RuleSet::builtin().unwrap(),
        keyhaven_scan::engine::EngineOptions::default(),
    )
}

/// Rule ids that fire on `text`.
pub fn fired(e: &keyhaven_scan::engine::Engine, text: &str) -> Vec<String> {
    e.scan_bytes(text.as_bytes(), "example.txt", None)
        .iter()
        .map(|m| e.rules.rules[m.rule].spec.id.clone())
        .collect()
}
