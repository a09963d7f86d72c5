//! `server-map preflight`: before a reload, check what the launcher will
//! need, with the arguments the site really gives it. Apache itself expands
//! the configuration (its `Define`s and includes: `-t -D DUMP_CONFIG`, with
//! mod_info loaded for the dump only); every `RewriteMap ... "prg:...
//! image-launcher ..."` found is run as `image-launcher --check ARGS`, which
//! prints one line per check. Exit 0 when every check of every launcher
//! passes, 1 otherwise, 2 when Apache's configuration cannot be read.

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};
use server_map::cli::PreflightArgs;

/// Where Apache's modules live, for mod_info.
const MODULE_DIRS: [&str; 3] = [
    "/usr/lib/apache2/modules",
    "/usr/lib64/httpd/modules",
    "/usr/lib/httpd/modules",
];

pub fn preflight(out: &mut impl Write, args: &PreflightArgs) -> anyhow::Result<ExitCode> {
    let dump = dump_config(args)?;
    let launchers = launcher_maps(&dump);
    if launchers.is_empty() {
        writeln!(
            out,
            "FAILED  no RewriteMap runs image-launcher in Apache's configuration: is the site enabled (a2ensite seaside-pool)?"
        )?;
        return Ok(ExitCode::FAILURE);
    }
    let mut all_passed = true;
    for (map, argv) in launchers {
        writeln!(out, "map {map}: {}", argv.join(" "))?;
        out.flush()?;
        let Some((program, rest)) = argv.split_first() else {
            continue;
        };
        let status = Command::new(program)
            .arg("--check")
            .args(rest)
            .env_clear()
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("running {program} --check"))?;
        all_passed &= status.success();
    }
    Ok(if all_passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Apache's configuration as Apache expands it.
fn dump_config(args: &PreflightArgs) -> anyhow::Result<String> {
    let info = MODULE_DIRS
        .iter()
        .map(|dir| Path::new(dir).join("mod_info.so"))
        .find(|path| path.exists())
        .context("cannot find Apache's mod_info.so (needed for the dump)")?;
    let mut apache: Vec<OsString> = vec![args.apache.clone().into()];
    if let Some(conf) = &args.conf {
        apache.extend(["-f".into(), conf.clone().into()]);
    }
    apache.extend(["-t", "-D", "DUMP_CONFIG", "-C"].map(OsString::from));
    apache.push(format!("LoadModule info_module {}", info.display()).into());
    // Read the envvars file (if any) in a shell, then exec Apache.
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"if [ -r "$0" ]; then . "$0"; fi; exec "$@""#)
        .arg(&args.envvars)
        .args(&apache)
        .stdin(Stdio::null())
        .output()
        .context("running Apache for its configuration")?;
    if !out.status.success() {
        bail!(
            "Apache's configuration test failed:\n{}",
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every `RewriteMap NAME "prg:... image-launcher ..."`: its name and argv.
fn launcher_maps(dump: &str) -> Vec<(String, Vec<String>)> {
    dump.lines()
        .filter_map(|line| {
            let words = split_words(line);
            let [directive, name, source, ..] = words.as_slice() else {
                return None;
            };
            if !directive.eq_ignore_ascii_case("RewriteMap") {
                return None;
            }
            let argv = split_words(source.strip_prefix("prg:")?);
            let program = Path::new(argv.first()?);
            (program.file_name()? == "image-launcher").then(|| (name.clone(), argv))
        })
        .collect()
}

/// Splits a line as Apache does (`ap_getword_conf`, `apr_tokenize_to_argv`):
/// at whitespace, with "double" or 'single' quotes grouping words and a
/// backslash taking the next character as it is.
pub fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&first) = chars.peek() else {
            return words;
        };
        let mut word = String::new();
        let quote = (first == '"' || first == '\'')
            .then(|| chars.next())
            .flatten();
        while let Some(c) = chars.next() {
            match (c, quote) {
                ('\\', _) => {
                    if let Some(next) = chars.next() {
                        word.push(next);
                    }
                }
                (c, Some(q)) if c == q => break,
                (c, None) if c.is_whitespace() => break,
                (c, _) => word.push(c),
            }
        }
        words.push(word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_as_apache_splits_them() {
        assert_eq!(
            split_words(
                r#"  RewriteMap VMS "prg:/bin/x --a b -- /usr/bin/squeak port {port}" www:www"#
            ),
            [
                "RewriteMap",
                "VMS",
                "prg:/bin/x --a b -- /usr/bin/squeak port {port}",
                "www:www"
            ]
        );
        assert_eq!(
            split_words(r#"a 'b c' "d \" e" f\ g"#),
            ["a", "b c", "d \" e", "f g"]
        );
        assert!(split_words("   ").is_empty());
    }

    #[test]
    fn only_maps_that_run_image_launcher_are_taken() {
        let dump = "  RewriteMap LIVE \"rnd:/var/lib/seaside/live.map\"\n\
                    \x20 RewriteMap VMS \"prg:/usr/local/bin/image-launcher --ports 3001-3010 -- /bin/vm {port}\"\n\
                    \x20 RewriteMap SERVERS \"prg:/usr/local/bin/server-map /etc/b\" www-data:www-data\n";
        let found = launcher_maps(dump);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "VMS");
        assert_eq!(
            found[0].1[..3],
            ["/usr/local/bin/image-launcher", "--ports", "3001-3010"]
        );
    }
}
