//! The `engine` binary: everything lives in the library; see `engine::cli`.

fn main() -> std::process::ExitCode {
    engine::cli::run()
}
