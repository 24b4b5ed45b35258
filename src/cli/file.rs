//! The configuration file: a TOML file whose keys are the role's flag names
//! (`upstream = ["https://relay:7443"]`, `allow-client = ["dns:gw"]`,
//! `connect-wait = "15s"`). Precedence: flag > environment > file >
//! default. The file is turned into flags before the command line is parsed,
//! so every value goes through exactly the validation a flag gets, and an
//! error names the file, the line and the key.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::Path;

use clap::{ArgAction, Command};
use toml::de::{DeTable, DeValue};

/// Flags that make no sense in a file.
const NOT_IN_FILE: &[&str] = &["help", "version", "config", "print-config"];

/// The outcome of merging a file into the command line.
pub struct Merged {
    pub args: Vec<OsString>,
    /// Flag names whose value came from the file.
    pub from_file: BTreeSet<String>,
}

/// Finds `--config FILE` (or `OPENSHELL_BRIDGE_CONFIG`) for `subcommand` and
/// inserts the file's settings into `args` as flags, right after the
/// subcommand, for every flag not already set by a flag or the environment.
pub fn merge(cli: &Command, args: Vec<OsString>) -> Result<Merged, String> {
    let Some((position, command)) = innermost_subcommand(cli, &args) else {
        return Ok(Merged { args, from_file: BTreeSet::new() });
    };
    let path = match flag_value(&args[position + 1..], "config") {
        Some(path) => path,
        None => match std::env::var_os("OPENSHELL_BRIDGE_CONFIG") {
            Some(path) if command.get_arguments().any(|a| a.get_id() == "config") && !path.is_empty() => path,
            _ => return Ok(Merged { args, from_file: BTreeSet::new() }),
        },
    };
    let path = Path::new(&path);
    let text = std::fs::read_to_string(path).map_err(|e| format!("--config {}: cannot read: {e}", path.display()))?;
    let flags = file_to_flags(command, &path.display().to_string(), &text, &args[position + 1..])?;
    let mut merged = args;
    let from_file = flags.iter().map(|(name, _)| name.clone()).collect();
    let inserted: Vec<OsString> = flags.into_iter().flat_map(|(_, values)| values).collect();
    merged.splice(position + 1..position + 1, inserted);
    Ok(Merged { args: merged, from_file })
}

/// Index and definition of the innermost subcommand on the command line
/// (`check shim` → `shim` under `check`), whose flags a file may set.
fn innermost_subcommand<'c>(cli: &'c Command, args: &[OsString]) -> Option<(usize, &'c Command)> {
    let mut found: Option<(usize, &Command)> = None;
    let mut parent = cli;
    let mut from = 1;
    while let Some((index, command)) = args.iter().enumerate().skip(from).find_map(|(i, arg)| {
        let text = arg.to_str()?;
        parent.find_subcommand(text).map(|c| (i, c))
    }) {
        found = Some((index, command));
        parent = command;
        from = index + 1;
    }
    found
}

/// The value of `--name V` or `--name=V` among `args`.
fn flag_value(args: &[OsString], name: &str) -> Option<OsString> {
    let long = format!("--{name}");
    let with_eq = format!("--{name}=");
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == long {
            return iter.next().cloned();
        }
        if let Some(value) = text.strip_prefix(&with_eq) {
            return Some(OsString::from(value));
        }
    }
    None
}

fn given_on_command_line(args: &[OsString], name: &str) -> bool {
    let long = format!("--{name}");
    let with_eq = format!("--{name}=");
    args.iter().any(|a| {
        let text = a.to_string_lossy();
        text == long || text.starts_with(&with_eq)
    })
}

/// Turns the file into `--flag value` arguments, validating each value with
/// the flag's own parser. Returns (flag name, arguments) pairs.
pub fn file_to_flags(
    command: &Command,
    file: &str,
    text: &str,
    command_line: &[OsString],
) -> Result<Vec<(String, Vec<OsString>)>, String> {
    let table =
        DeTable::parse(text).map_err(|e| format!("--config {file}: not valid TOML: {}", one_line(&e.to_string())))?;
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let mut out = Vec::new();
    let mut seen: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for (key, value) in table.get_ref().iter() {
        let line = line_of(key.span().start);
        let key_text = key.get_ref().as_ref().replace('_', "-");
        let shown: String = key.get_ref().as_ref().chars().take(64).flat_map(char::escape_debug).collect();
        let at = format!("{file}:{line}: key `{shown}`");
        if let Some(other) = seen.insert(key_text.clone(), line) {
            let (first, second) = (other.min(line), other.max(line));
            return Err(format!(
                "{file}:{second}: key `{key_text}` set twice (first at line {first}; `-` and `_` spell the same key)"
            ));
        }
        if value.get_ref().is_table() {
            return Err(format!("{at}: sections are not supported; write the role's flags as top-level keys"));
        }
        let Some(arg) = command.get_arguments().find(|a| a.get_long() == Some(key_text.as_str())) else {
            return Err(format!(
                "{at}: unknown key for `{}`; known keys: {}",
                command.get_name(),
                known_keys(command).join(", ")
            ));
        };
        if NOT_IN_FILE.contains(&key_text.as_str()) {
            return Err(format!("{at}: cannot be set in a configuration file"));
        }
        let env_set = arg.get_env().is_some_and(|env| std::env::var_os(env).is_some_and(|v| !v.is_empty()));
        if given_on_command_line(command_line, &key_text) || env_set {
            continue;
        }
        let values = toml_values(value.get_ref()).map_err(|e| format!("{at}: {e}"))?;
        let flag = OsString::from(format!("--{key_text}"));
        let mut argv = Vec::new();
        match arg.get_action() {
            ArgAction::SetTrue => match value.get_ref() {
                DeValue::Boolean(true) => argv.push(flag),
                DeValue::Boolean(false) => {}
                other => return Err(format!("{at}: expected true or false, found {}", other.type_str())),
            },
            ArgAction::Append => {
                for v in values {
                    check_value(command, arg, &v).map_err(|e| format!("{at}: {e}"))?;
                    argv.push(flag.clone());
                    argv.push(OsString::from(v));
                }
            }
            _ => {
                let [single] = values.as_slice() else {
                    return Err(format!("{at}: expected one value, found a list"));
                };
                check_value(command, arg, single).map_err(|e| format!("{at}: {e}"))?;
                argv.push(flag);
                argv.push(OsString::from(single));
            }
        }
        out.push((key_text, argv));
    }
    Ok(out)
}

pub fn is_not_in_file(name: &str) -> bool {
    NOT_IN_FILE.contains(&name)
}

fn known_keys(command: &Command) -> Vec<String> {
    command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|name| !NOT_IN_FILE.contains(name))
        .map(str::to_owned)
        .collect()
}

/// Scalars become one value, arrays several; tables are not allowed.
fn toml_values(value: &DeValue<'_>) -> Result<Vec<String>, String> {
    match value {
        DeValue::String(s) => Ok(vec![s.to_string()]),
        DeValue::Integer(i) => Ok(vec![i.as_str().replace('_', "")]),
        DeValue::Float(f) => Ok(vec![f.as_str().to_owned()]),
        DeValue::Boolean(b) => Ok(vec![b.to_string()]),
        DeValue::Array(items) => items
            .iter()
            .map(|item| match item.get_ref() {
                DeValue::Array(_) | DeValue::Table(_) => Err("lists may hold only strings and numbers".to_owned()),
                scalar => toml_values(scalar).map(|mut v| v.remove(0)),
            })
            .collect(),
        DeValue::Datetime(_) => Err("a date is not a valid value here; write durations as strings like \"15s\"".into()),
        DeValue::Table(_) => Err("sections are not supported; write the role's flags as top-level keys".into()),
    }
}

/// Runs the flag's own parser on `value`, so the file gets the same check
/// (a one-flag command carrying just that flag's parser).
fn check_value(command: &Command, arg: &clap::Arg, value: &str) -> Result<(), String> {
    let long = arg.get_long().unwrap_or_default();
    let probe = clap::Arg::new(arg.get_id().clone())
        .long(long.to_owned())
        .value_parser(arg.get_value_parser().clone())
        .action(ArgAction::Set);
    Command::new(command.get_name().to_owned())
        .no_binary_name(true)
        .arg(probe)
        .try_get_matches_from([OsString::from(format!("--{long}")), OsString::from(value)])
        .map(|_| ())
        .map_err(|e| {
            let text = one_line(&e.render().to_string());
            let text = text.trim_start_matches("error: ");
            text.split("; Usage:")
                .next()
                .unwrap_or_default()
                .split("; For more information")
                .next()
                .unwrap_or_default()
                .to_owned()
        })
}

fn one_line(text: &str) -> String {
    text.split(['\n', '\r']).map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::cli::args::{parse_from, Cli, Command as Role};

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn write(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path.display().to_string())
    }

    const BASE: &str = "socket = \"/run/b/s.sock\"\nupstream = [\"https://a:1\", \"https://b:2\"]\n\
        ca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n";

    #[test]
    fn file_values_fill_in_and_flags_win() {
        let (_dir, path) = write(&format!("{BASE}connect_wait = \"20s\"\nmax-connections = 64\ntls12 = true\n"));
        let parsed = parse_from(args(&["bridge", "shim", "--config", &path, "--max-connections", "8"])).unwrap();
        let Role::Shim(shim) = parsed.cli.command else { panic!("not shim") };
        assert_eq!(shim.upstreams, vec!["https://a:1", "https://b:2"]);
        assert_eq!(shim.tuning.connect_wait, std::time::Duration::from_secs(20));
        assert_eq!(shim.tuning.max_connections, 8);
        assert!(shim.tls.tls12);
        let shown = parsed.effective.unwrap();
        assert!(shown.contains("max-connections = 8  # flag"), "{shown}");
        assert!(shown.contains("connect-wait = \"20s\"  # file"), "{shown}");
        assert!(shown.contains("keepalive-timeout = \"5s\"  # default"), "{shown}");
        assert!(!shown.contains("BEGIN"), "key material must never be shown");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases = [
            ("bogus = 1\n", ":6: key `bogus`: unknown key"),
            ("connect-wait = \"fast\"\n", ":6: key `connect-wait`: invalid value 'fast'"),
            ("max-connections = \"many\"\n", ":6: key `max-connections`: invalid value 'many'"),
            ("tls12 = \"yes\"\n", ":6: key `tls12`: expected true or false"),
            ("[shim]\nsocket = \"x\"\n", ":6: key `shim`: sections are not supported"),
            ("socket2 = [[1]]\n", "unknown key"),
            ("server-name = [\"a\", \"b\"]\n", "expected one value"),
            ("config = \"other.toml\"\n", "cannot be set in a configuration file"),
            ("connect_wait = \"1s\"\nconnect-wait = \"2s\"\n", ":7: key `connect-wait` set twice (first at line 6"),
            ("socket = [1\n", "not valid TOML"),
        ];
        for (extra, expected) in cases {
            let (_dir, path) = write(&format!("{BASE}{extra}"));
            let Err(crate::cli::args::ParseError::File(message)) =
                parse_from(args(&["bridge", "shim", "--config", &path]))
            else {
                panic!("{extra:?} was accepted");
            };
            assert!(message.contains(expected), "{extra:?}: {message}");
            assert!(message.contains("bridge.toml"), "{message}");
        }
    }

    #[test]
    fn check_reads_the_same_file_as_its_role() {
        let (_dir, path) = write(&format!("{BASE}connect-wait = \"3s\"\n"));
        let parsed = parse_from(args(&["bridge", "check", "--timeout", "2s", "shim", "--config", &path])).unwrap();
        let Role::Check(check) = parsed.cli.command else { panic!("not check") };
        let rendered = format!("{check:?}");
        assert!(rendered.contains("https://b:2") && rendered.contains("3s"), "{rendered}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let Err(crate::cli::args::ParseError::File(message)) =
            parse_from(args(&["bridge", "relay", "--config", "/nonexistent/relay.toml"]))
        else {
            panic!("accepted");
        };
        assert!(message.contains("--config /nonexistent/relay.toml: cannot read"), "{message}");
    }

    /// Every flag a role has, written in a file with a value other than its
    /// default: the key each one needs, in TOML as written.
    const SHARED_KEYS: &[(&str, &str)] = &[
        ("admin", "\"127.0.0.1:9191\""),
        ("unsafe-admin", "true"),
        ("ca", "\"/etc/b/ca.pem\""),
        ("cert", "\"/etc/b/me.pem\""),
        ("key", "\"/etc/b/me-key.pem\""),
        ("allow-loose-key-permissions", "true"),
        ("tls12", "true"),
        ("crl", "[\"/etc/b/edge.crl\", \"/etc/b/relay.crl\"]"),
        ("reload-interval", "\"7s\""),
        ("connect-wait", "\"21s\""),
        ("connect-timeout", "\"4s\""),
        ("keepalive-interval", "\"11s\""),
        ("keepalive-timeout", "\"12s\""),
        ("default-timeout", "\"30s\""),
        ("drain-timeout", "\"13s\""),
        ("max-header-bytes", "4096"),
        ("max-concurrent-streams", "17"),
        ("max-connections", "33"),
        ("handshake-timeout", "\"9s\""),
        ("worker-threads", "3"),
    ];

    const SHIM_KEYS: &[(&str, &str)] = &[
        ("socket", "\"/run/b/s.sock\""),
        ("upstream", "[\"https://a:1\", \"https://b:2\"]"),
        ("server-name", "\"relay.internal\""),
        ("expect-server", "[\"uri:spiffe://corp/relay\"]"),
        ("allow-uid", "[1001, 1002]"),
        ("proxy", "\"https://u@proxy.corp:3128\""),
        ("proxy-ca", "\"/etc/b/proxy-ca.pem\""),
        ("callback-target", "\"127.0.0.1:8443\""),
        ("callback-max-connections", "77"),
        ("callback-idle-timeout", "\"9m\""),
    ];

    /// The relay's own keys; `driver-socket` and `driver-url` exclude each
    /// other, so there are two files.
    const RELAY_KEYS: &[(&str, &str)] = &[
        ("listen", "\"127.0.0.1:7443\""),
        ("unsafe-driver-target", "true"),
        ("allow-client", "[\"dns:gw\", \"uri:spiffe://corp/edge/*\"]"),
        ("allow-client-read-only", "[\"cn:viewer\"]"),
        ("allow-any-client", "true"),
        ("max-handshakes", "5"),
        ("max-handshakes-per-source", "2"),
        ("callback-listen", "\"0.0.0.0:9443\""),
        ("callback-client", "\"dns:gw\""),
        ("callback-max-connections", "78"),
        ("callback-idle-timeout", "\"8m\""),
    ];

    /// Writes `keys` in a file, parses `role --config FILE` and checks that
    /// the effective configuration shows every one with the file's value
    /// (the TOML scalars here are written as the rendering writes them).
    fn parse_file(role: &str, keys: &[&[(&str, &str)]]) -> (crate::cli::args::Parsed, tempfile::TempDir) {
        let keys: Vec<(&str, &str)> = keys.iter().flat_map(|k| k.iter().copied()).collect();
        let text: String = keys.iter().map(|(key, value)| format!("{key} = {value}\n")).collect();
        let (dir, path) = write(&text);
        let parsed = parse_from(args(&["bridge", role, "--config", &path])).unwrap_or_else(|e| panic!("{e:?}"));
        let shown = parsed.effective.clone().unwrap();
        for (key, value) in &keys {
            assert!(
                shown.contains(&format!("\n{key} = {value}  # file\n")),
                "{role}: {key} = {value} not taken from the file:\n{shown}"
            );
        }
        (parsed, dir)
    }

    #[test]
    fn every_role_flag_can_be_written_in_a_file() {
        use std::path::PathBuf;
        use std::time::Duration;

        // The lists name every flag of both roles (so a new flag must be added here).
        let cli = Cli::command();
        for (role, lists) in [("shim", vec![SHIM_KEYS, SHARED_KEYS]), ("relay", vec![RELAY_KEYS, SHARED_KEYS])] {
            let command = cli.find_subcommand(role).unwrap();
            for arg in command.get_arguments() {
                let Some(name) = arg.get_long() else { continue };
                let listed = lists.iter().flat_map(|l| l.iter()).any(|(key, _)| *key == name)
                    || (role == "relay" && ["driver-socket", "driver-url"].contains(&name));
                assert!(listed || is_not_in_file(name), "{role} --{name} is not written in a file by this test");
            }
        }

        let (parsed, _dir) = parse_file("shim", &[SHIM_KEYS, SHARED_KEYS]);
        let Role::Shim(shim) = parsed.cli.command else { panic!("not shim") };
        assert_eq!(shim.socket, PathBuf::from("/run/b/s.sock"));
        assert_eq!(shim.upstreams, vec!["https://a:1", "https://b:2"]);
        assert_eq!(shim.server_name.as_deref(), Some("relay.internal"));
        assert_eq!(shim.expect_server, vec!["uri:spiffe://corp/relay"]);
        assert_eq!(shim.allow_uids, vec![1001, 1002]);
        assert_eq!(shim.callback_target.as_deref(), Some("127.0.0.1:8443"));
        assert_eq!(shim.callback.callback_max_connections, 77);
        assert_eq!(shim.callback.callback_idle_timeout, Duration::from_secs(540));
        assert_eq!(shim.proxy.as_deref(), Some("https://u@proxy.corp:3128"));
        assert_eq!(shim.proxy_ca, Some(PathBuf::from("/etc/b/proxy-ca.pem")));
        let check_shared = |admin: &crate::cli::args::AdminArgs,
                            tls: &crate::cli::args::TlsArgs,
                            tuning: &crate::cli::args::TuningArgs| {
            assert_eq!(admin.admin, Some("127.0.0.1:9191".parse().unwrap()));
            assert!(admin.unsafe_admin);
            assert_eq!(tls.ca, PathBuf::from("/etc/b/ca.pem"));
            assert_eq!(tls.cert, PathBuf::from("/etc/b/me.pem"));
            assert_eq!(tls.key, PathBuf::from("/etc/b/me-key.pem"));
            assert!(tls.allow_loose_key_permissions);
            assert!(tls.tls12);
            assert_eq!(tls.crls, vec![PathBuf::from("/etc/b/edge.crl"), PathBuf::from("/etc/b/relay.crl")]);
            assert_eq!(tls.reload_interval, Duration::from_secs(7));
            assert_eq!(tuning.connect_wait, Duration::from_secs(21));
            assert_eq!(tuning.connect_timeout, Duration::from_secs(4));
            assert_eq!(tuning.keepalive_interval, Duration::from_secs(11));
            assert_eq!(tuning.keepalive_timeout, Duration::from_secs(12));
            assert_eq!(tuning.default_timeout, Some(Duration::from_secs(30)));
            assert_eq!(tuning.drain_timeout, Duration::from_secs(13));
            assert_eq!(tuning.max_header_bytes, 4096);
            assert_eq!(tuning.max_concurrent_streams, 17);
            assert_eq!(tuning.max_connections, 33);
            assert_eq!(tuning.handshake_timeout, Duration::from_secs(9));
            assert_eq!(tuning.worker_threads, 3);
        };
        check_shared(&shim.admin, &shim.tls, &shim.tuning);

        for (driver_key, driver_value) in
            [("driver-socket", "\"/run/driver/d.sock\""), ("driver-url", "\"http://10.0.0.9:50051\"")]
        {
            let (parsed, _dir) = parse_file("relay", &[RELAY_KEYS, SHARED_KEYS, &[(driver_key, driver_value)]]);
            let Role::Relay(relay) = parsed.cli.command else { panic!("not relay") };
            assert_eq!(relay.listen, "127.0.0.1:7443");
            assert_eq!(relay.callback_listen.as_deref(), Some("0.0.0.0:9443"));
            assert_eq!(relay.callback_client.as_deref(), Some("dns:gw"));
            assert_eq!(relay.callback.callback_max_connections, 78);
            assert_eq!(relay.callback.callback_idle_timeout, Duration::from_secs(480));
            if driver_key == "driver-socket" {
                assert_eq!(relay.driver_socket, Some(PathBuf::from("/run/driver/d.sock")));
                assert_eq!(relay.driver_url, None);
            } else {
                assert_eq!(relay.driver_url.as_deref(), Some("http://10.0.0.9:50051"));
                assert_eq!(relay.driver_socket, None);
            }
            assert!(relay.unsafe_driver_target);
            assert_eq!(relay.allow_clients, vec!["dns:gw", "uri:spiffe://corp/edge/*"]);
            assert_eq!(relay.allow_clients_read_only, vec!["cn:viewer"]);
            assert!(relay.allow_any_client);
            assert_eq!(relay.max_handshakes, 5);
            assert_eq!(relay.max_handshakes_per_source, 2);
            check_shared(&relay.admin, &relay.tls, &relay.tuning);
        }
    }
}
