//! `sqlx::migrate!` embeds the migration files at compile time; a new file alone must rebuild the hub.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=migrations-sqlite");
}
