fn main() {
    // sqlx::migrate! embeds the migrations at build time.
    println!("cargo:rerun-if-changed=migrations");
}
