//! `settings!`: each setting written once, in `settings/mod.rs`, and made
//! into its flag, env var, TOML key, `--help` line and default from there.
//!
//! An entry is its doc comment, then one of:
//!
//! - `name: T = default, env "ROSTER_NAME";` a value with a default
//!   (shown in `--help` as `[default: …]`, rendered from `default`);
//! - `name: T, env "ROSTER_NAME", unset "word";` a value that may stay
//!   unset (`word` is what README's table says then: `none`, `generated`);
//! - `name: bool, env "ROSTER_NAME", switch;` a flag, on if any source says so;
//! - `name: T, file_only;` a TOML-only value (no flag, no env).
//!
//! Any entry may end with `, [attr(...)]` attributes for its `ServeArgs`
//! field, e.g. `[arg(hide_env_values = true)]` or `[serde(skip)]`.
//!
//! Generated: `ServeArgs` (every source but the defaults, all optional),
//! `Defaults`, `Merged` (flag or env, then file, then default: what
//! `resolve` builds `Settings` from) and, for tests, `declared()`.

/// One declared setting as README's table must show it.
#[cfg(test)]
pub(crate) struct Declared {
    pub name: &'static str,
    pub env: &'static str,
    /// The default rendered (`Value`), or the word for "no value".
    pub default: Shown,
}

#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Shown {
    Value(String),
    Word(&'static str),
}

/// A defaulted setting's `--help` line: its doc as clap shows one (lines
/// joined, a last period dropped), then the default, as clap's
/// `default_value` would show it.
pub(crate) fn help_with_default(doc: &[&str], default: &dyn std::fmt::Display) -> String {
    let text = doc.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
    let text = match text.strip_suffix('.') {
        Some(t) if !t.ends_with('.') => t,
        _ => &text,
    };
    format!("{text} [default: {default}]")
}

macro_rules! settings {
    // A value with a default.
    (@munch ($a:ident $f:ident $d:ident) [$($args:tt)*] [$($merged:tt)*] [$($merge:tt)*]
        [$($defaults:tt)*] [$($init:tt)*] [$($declared:tt)*]
        $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr, env $env:literal
        $(, [$($attr:tt)*])* ; $($rest:tt)*
    ) => {
        settings!(@munch ($a $f $d)
            [$($args)*
                $(#[doc = $doc])*
                #[arg(long, env = $env, help = $crate::settings::declare::help_with_default(
                    &[$($doc),*], &Defaults::default().$name))]
                $(#[$($attr)*])*
                pub $name: Option<$ty>,]
            [$($merged)* $(#[doc = $doc])* pub $name: $ty,]
            [$($merge)* $name: $a.$name.or($f.$name).unwrap_or($d.$name),]
            [$($defaults)* pub $name: $ty,]
            [$($init)* $name: $default,]
            [$($declared)* $crate::settings::declare::Declared {
                name: stringify!($name),
                env: $env,
                default: $crate::settings::declare::Shown::Value(Defaults::default().$name.to_string()),
            },]
            $($rest)*);
    };

    // A value that may stay unset.
    (@munch ($a:ident $f:ident $d:ident) [$($args:tt)*] [$($merged:tt)*] [$($merge:tt)*]
        [$($defaults:tt)*] [$($init:tt)*] [$($declared:tt)*]
        $(#[doc = $doc:literal])* $name:ident : $ty:ty, env $env:literal, unset $word:literal
        $(, [$($attr:tt)*])* ; $($rest:tt)*
    ) => {
        settings!(@munch ($a $f $d)
            [$($args)* $(#[doc = $doc])* #[arg(long, env = $env)] $(#[$($attr)*])* pub $name: Option<$ty>,]
            [$($merged)* $(#[doc = $doc])* pub $name: Option<$ty>,]
            [$($merge)* $name: $a.$name.or($f.$name),]
            [$($defaults)*]
            [$($init)*]
            [$($declared)* $crate::settings::declare::Declared {
                name: stringify!($name),
                env: $env,
                default: $crate::settings::declare::Shown::Word($word),
            },]
            $($rest)*);
    };

    // A switch.
    (@munch ($a:ident $f:ident $d:ident) [$($args:tt)*] [$($merged:tt)*] [$($merge:tt)*]
        [$($defaults:tt)*] [$($init:tt)*] [$($declared:tt)*]
        $(#[doc = $doc:literal])* $name:ident : bool, env $env:literal, switch
        $(, [$($attr:tt)*])* ; $($rest:tt)*
    ) => {
        settings!(@munch ($a $f $d)
            [$($args)* $(#[doc = $doc])* #[arg(long, env = $env)] #[serde(default)] $(#[$($attr)*])* pub $name: bool,]
            [$($merged)* $(#[doc = $doc])* pub $name: bool,]
            [$($merge)* $name: $a.$name || $f.$name,]
            [$($defaults)*]
            [$($init)*]
            [$($declared)* $crate::settings::declare::Declared {
                name: stringify!($name),
                env: $env,
                default: $crate::settings::declare::Shown::Word("off"),
            },]
            $($rest)*);
    };

    // A TOML-only value: only the file's counts.
    (@munch ($a:ident $f:ident $d:ident) [$($args:tt)*] [$($merged:tt)*] [$($merge:tt)*]
        [$($defaults:tt)*] [$($init:tt)*] [$($declared:tt)*]
        $(#[doc = $doc:literal])* $name:ident : $ty:ty, file_only
        $(, [$($attr:tt)*])* ; $($rest:tt)*
    ) => {
        settings!(@munch ($a $f $d)
            [$($args)* $(#[doc = $doc])* #[arg(skip)] #[serde(default)] $(#[$($attr)*])* pub $name: $ty,]
            [$($merged)* $(#[doc = $doc])* pub $name: $ty,]
            [$($merge)* $name: $f.$name,]
            [$($defaults)*]
            [$($init)*]
            [$($declared)*]
            $($rest)*);
    };

    // Every entry taken: emit the items.
    (@munch ($a:ident $f:ident $d:ident) [$($args:tt)*] [$($merged:tt)*] [$($merge:tt)*]
        [$($defaults:tt)*] [$($init:tt)*] [$($declared:tt)*]
    ) => {
        /// Every setting is optional here: unset means "ask the file, then the default".
        #[derive(Debug, Default, Clone, Args, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct ServeArgs { $($args)* }

        /// The settings' built-in values (those that have one).
        #[derive(Debug, Clone)]
        pub struct Defaults { $($defaults)* }

        impl Default for Defaults {
            fn default() -> Self {
                Defaults { $($init)* }
            }
        }

        /// Each setting from the first source that has it: flag or env
        /// (clap reads both), then the file, then `Defaults`.
        #[derive(Debug, Clone)]
        pub struct Merged { $($merged)* }

        impl ServeArgs {
            /// `self` from flags and env, `file` from the TOML file.
            pub fn merged(self, file: ServeArgs) -> Merged {
                let ($a, $f, $d) = (self, file, Defaults::default());
                Merged { $($merge)* }
            }
        }

        /// Every setting with a flag, in declaration order.
        #[cfg(test)]
        pub(crate) fn declared() -> Vec<$crate::settings::declare::Declared> {
            vec![$($declared)*]
        }
    };

    // Entry point, last as it matches anything. The idents `merged` uses
    // are made here so that every arm above names the same ones (hygiene).
    ($($entries:tt)*) => {
        settings!(@munch (args file defaults) [] [] [] [] [] [] $($entries)*);
    };
}

#[cfg(test)]
mod tests {
    use super::Shown;
    use crate::settings::{declared, Cli, ServeArgs};
    use clap::CommandFactory;

    /// What clap and serde make of each declaration: the flag is the name in
    /// kebab case, the env var the declared one, `--help` shows the default,
    /// and the TOML key is the name.
    #[test]
    fn flags_env_help_and_keys_follow_the_declarations() {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").expect("a serve subcommand");
        let declared = declared();
        for d in &declared {
            let arg = serve
                .get_arguments()
                .find(|a| a.get_id() == d.name)
                .unwrap_or_else(|| panic!("{} has no flag", d.name));
            assert_eq!(arg.get_long(), Some(d.name.replace('_', "-").as_str()));
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(d.env));
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            match &d.default {
                Shown::Value(v) => assert!(help.ends_with(&format!(" [default: {v}]")), "{help}"),
                Shown::Word(_) => assert!(!help.contains("[default:"), "{help}"),
            }
            // A value of the wrong type, so the error tells a known key
            // from an unknown one.
            let err = toml::from_str::<ServeArgs>(&format!("{} = [[]]", d.name)).unwrap_err();
            let flag_only = matches!(d.name, "config" | "dev");
            assert_eq!(
                err.to_string().contains("unknown field"),
                flag_only,
                "{}: {err}",
                d.name
            );
        }
        let flags = serve
            .get_arguments()
            .filter(|a| a.get_long() != Some("help"));
        assert_eq!(flags.count(), declared.len(), "a flag outside settings!");
    }

    /// README's settings table cannot drift: each row's flags, env vars and
    /// defaults are the declared ones, and each declared setting has a row.
    /// Rows may group settings: their flags, env vars and (backquoted)
    /// defaults then go in the same order.
    #[test]
    fn readme_table_matches_the_declarations() {
        let readme = include_str!("../../../../README.md");
        let quoted = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        };
        let declared = declared();
        let mut rows = readme
            .lines()
            .skip_while(|l| !l.starts_with("| flag | env | default |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .peekable();
        assert!(rows.peek().is_some(), "README.md has no settings table");
        let mut wrong = Vec::new();
        let mut seen = Vec::new();
        for row in rows {
            let cells: Vec<&str> = row.trim_start_matches('|').split('|').collect();
            let (flags, envs, default) = (quoted(cells[0]), quoted(cells[1]), cells[2].trim());
            let values = quoted(default);
            if envs.len() != flags.len() {
                wrong.push(format!("{row}\n  needs one env var per flag"));
                continue;
            }
            for (i, flag) in flags.iter().enumerate() {
                let name = flag.trim_start_matches("--").replace('-', "_");
                let Some(d) = declared.iter().find(|d| d.name == name) else {
                    wrong.push(format!("{flag}: no such setting"));
                    continue;
                };
                seen.push(d.name);
                if envs[i] != d.env {
                    wrong.push(format!("{flag}: env {} but declared {}", envs[i], d.env));
                }
                let agrees = match &d.default {
                    Shown::Value(v) => values.len() == flags.len() && values[i] == *v,
                    Shown::Word(w) => values.is_empty() && default.starts_with(w),
                };
                if !agrees {
                    wrong.push(format!(
                        "{flag}: default {default:?} but declared {:?}",
                        d.default
                    ));
                }
            }
        }
        for d in &declared {
            match seen.iter().filter(|&&s| s == d.name).count() {
                1 => {}
                0 => wrong.push(format!("{}: no row", d.name)),
                _ => wrong.push(format!("{}: more than one row", d.name)),
            }
        }
        assert!(
            wrong.is_empty(),
            "README.md's settings table:\n{}",
            wrong.join("\n")
        );
    }
}
