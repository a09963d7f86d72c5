//! `image-launcher`: see the library's documentation (`image_launcher`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // In a VM's systemd scope, image-launcher is also the step that drops
    // privileges before the VM's own program (vmpool::systemd).
    let argv: Vec<_> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == vmpool::systemd::EXEC_VM) {
        return image_launcher::exec_vm(&argv[2..]);
    }
    image_launcher::run(image_launcher::config::Args::parse())
}
