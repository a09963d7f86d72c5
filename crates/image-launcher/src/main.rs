//! `image-launcher`: see the library's documentation (`image_launcher`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    image_launcher::run(image_launcher::config::Args::parse())
}
