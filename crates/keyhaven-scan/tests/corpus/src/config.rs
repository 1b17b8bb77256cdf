/// Runtime settings.
pub struct Settings {
    pub api_key: Option<String>,
    pub password_file: std::path::PathBuf,
}

pub fn load(args: &Args) -> Settings {
    let password = args.password.clone();
    let api_key = std::env::var("API_KEY").ok();
    let token = format!("Bearer {}", args.token);
    let secret_key = derive_secret_key(&password, SALT_LEN);
    Settings { api_key, password_file: args.password_file.clone() }
}
