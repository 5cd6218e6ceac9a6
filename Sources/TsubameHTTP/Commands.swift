// SPDX-License-Identifier: MIT
// The `tsubame` command-line tool's subcommands, as functions that take
// arguments and return an exit code, so tests can run them in-process.

public import Foundation
public import TsubameCore
import TsubameCrypto
import TsubamePostgres

public enum Commands {
    public static let usage = """
        usage: tsubame COMMAND [OPTIONS]

        Commands:
          migrate                 apply database migrations (each in one transaction)
          schema-status           print the schema version of the database and of this binary
          keygen --file PATH      create a new master key file (mode 0600); refuses to overwrite
          user create --username NAME [--role viewer|operator|admin] [--password-file FILE]
                                  create a user; prints a generated password when none is given
          user reset-password --username NAME [--password-file FILE]
                                  set a new password (generated unless given); signs the user out everywhere
          check-config            validate the settings and exit (non-zero with messages on a problem)
          config-dump [--reveal]  print every setting; secrets redacted unless --reveal
          export [--file PATH]    write servers and jobs as JSON, without secrets
          import --file PATH [--dry-run] [--as ADMIN]
                                  create the servers and jobs of an export that do not exist yet
          backup --file PATH      dump the whole database with pg_dump (custom format)
          restore --file PATH [--yes]
                                  replace the database with a backup, with pg_restore
          rotate-key              re-seal every stored secret under the current master key

        Settings come from the environment and TSUBAME_CONFIG_FILE; see README.md.
        Every command accepts --help.
        """

    /// Runs a command line (without the program name). Output goes to `out`, errors to `err`.
    public static func run(_ args: [String], environment: [String: String] = ProcessInfo.processInfo.environment,
                           out: (String) -> Void, err: (String) -> Void) -> Int32 {
        guard let cmd = args.first else { err(usage); return 2 }
        let rest = Array(args.dropFirst())
        if cmd == "--help" || cmd == "-h" || cmd == "help" { out(usage); return 0 }
        if rest.contains("--help") || rest.contains("-h") { out(help(cmd)); return 0 }
        let config: Config
        do { config = try Config.load(environment: environment) } catch {
            err("tsubame: configuration problem:\n\(error)"); return 2
        }
        do {
            switch cmd {
            case "migrate":
                let db = try PGConnection(config.databaseURL)
                let applied = try Migrator.migrate(db) { out($0) }
                out(applied.isEmpty ? "schema is up to date (version \(Migrator.expectedVersion))"
                                    : "schema migrated to version \(Migrator.expectedVersion)")
                return 0
            case "schema-status":
                let db = try PGConnection(config.databaseURL)
                let v = try Migrator.currentVersion(db)
                out("database schema version: \(v)\nthis binary expects: \(Migrator.expectedVersion)")
                if v < Migrator.expectedVersion { out("run `tsubame migrate` to upgrade"); return 1 }
                if v > Migrator.expectedVersion { out("the database is newer than this binary: upgrade tsubame-ci"); return 1 }
                return 0
            case "keygen":
                guard let path = option(rest, "--file") else { err("tsubame keygen: --file PATH is required"); return 2 }
                try SecretBox.createKeyFile(path: path)
                out("created master key \(path) (mode 0600); back it up: without it stored credentials cannot be read")
                return 0
            case "user":
                return try user(rest, config: config, out: out, err: err)
            case "check-config":
                _ = try SecretBox.load(config: config)
                out("configuration is valid")
                return 0
            case "config-dump":
                out(config.dump(revealSecrets: rest.contains("--reveal")))
                return 0
            case "export":
                return try export(rest, config: config, out: out, err: err)
            case "import":
                return try importCommand(rest, config: config, out: out, err: err)
            case "backup":
                return try backup(rest, config: config, environment: environment, out: out, err: err)
            case "restore":
                return try restore(rest, config: config, environment: environment, out: out, err: err)
            case "rotate-key":
                return try rotateKey(rest, config: config, out: out, err: err)
            default:
                err("tsubame: unknown command \(cmd)\n\n\(usage)")
                return 2
            }
        } catch let e as PGError {
            err("tsubame \(cmd): \(e.description)"); return 1
        } catch {
            err("tsubame \(cmd): \(error)"); return 1
        }
    }

    static func help(_ cmd: String) -> String {
        switch cmd {
        case "migrate": return "usage: tsubame migrate\n\nApplies every migration the database lacks, in order, each in one transaction."
        case "schema-status": return "usage: tsubame schema-status\n\nPrints the database's schema version and the one this binary needs; exits 1 when they differ."
        case "keygen": return "usage: tsubame keygen --file PATH\n\nCreates a 256-bit master key file with mode 0600. Refuses to overwrite an existing file."
        case "user": return """
            usage: tsubame user create --username NAME [--role viewer|operator|admin] [--password-file FILE]
                   tsubame user reset-password --username NAME [--password-file FILE]

            Without --password-file a strong password is generated and printed once as `password: …`.
            """
        case "check-config": return "usage: tsubame check-config\n\nValidates every setting and the master key file."
        case "config-dump": return "usage: tsubame config-dump [--reveal]\n\nPrints every setting as KEY=VALUE; secrets show as (redacted) unless --reveal."
        case "export": return """
            usage: tsubame export [--file PATH]

            Writes every server and job as one JSON document (to PATH, or standard output), ordered by name, with names
            instead of ids. No secret leaves: server passwords and keys, secret env values and notification secrets
            are left out (secret_env_names lists what a job had).
            """
        case "import": return """
            usage: tsubame import --file PATH [--dry-run] [--as ADMIN]

            Creates the servers and jobs of an export that do not exist here yet (matched by name; existing ones are
            kept unchanged), with the same checks as the API, in one transaction: on any problem nothing is imported.
            Imported servers have no credentials and jobs no secret env values: the command lists what to set.
            --dry-run   check everything and report, then roll back
            --as ADMIN  the admin the audit log names (default: the first admin)
            """
        case "backup": return """
            usage: tsubame backup --file PATH

            Dumps the database (TSUBAME_DATABASE_URL) with pg_dump --format=custom to a new file. Safe while
            tsubame-ci runs (one consistent snapshot). The dump holds credentials sealed with the master key:
            back up TSUBAME_MASTER_KEY_FILE separately, or they cannot be read after a restore.
            """
        case "restore": return """
            usage: tsubame restore --file PATH [--yes]

            Replaces everything in the database with a backup made by `tsubame backup` (pg_restore --clean, in one
            transaction). Stop the pools and executors first. Without --yes it refuses a database that has data.
            Run `tsubame migrate` afterwards when the backup is older than this binary.
            """
        case "rotate-key": return """
            usage: tsubame rotate-key

            Re-seals every stored secret (server credentials, jobs' and runs' secret env, webhook secrets) with the key in
            TSUBAME_MASTER_KEY_FILE, in batches; safe to stop and run again. A rotation without downtime:
              1. tsubame keygen --file /etc/tsubame/master-2.key
              2. set TSUBAME_MASTER_KEY_FILE to the new file and TSUBAME_PREVIOUS_MASTER_KEY_FILES to the old one,
                 reload the pools and restart the executors (they open secrets with either key, seal with the new)
              3. tsubame rotate-key (with the same settings)
              4. remove TSUBAME_PREVIOUS_MASTER_KEY_FILES, reload and restart again, then destroy the old key
            It refuses to start, changing nothing, while a secret is sealed with a key it was not given.
            """
        default: return usage
        }
    }

    static func option(_ args: [String], _ name: String) -> String? {
        guard let i = args.firstIndex(of: name), i + 1 < args.count else { return nil }
        return args[i + 1]
    }

    static func password(_ args: [String]) throws -> (String, generated: Bool) {
        if let file = option(args, "--password-file") {
            let p = try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .newlines)
            guard p.count >= 10 else { throw PoolLikeError("the password must be at least 10 characters") }
            return (p, false)
        }
        return (String(Crypto.randomToken().prefix(20)), true)
    }

    static func user(_ args: [String], config: Config, out: (String) -> Void, err: (String) -> Void) throws -> Int32 {
        guard let sub = args.first, let username = option(args, "--username") else { err(help("user")); return 2 }
        guard username.range(of: Users.usernamePattern, options: .regularExpression) != nil, username.count <= 64 else {
            err("tsubame user: --username may use letters, digits and _ . @ - only (at most 64)"); return 2
        }
        let hasher = PasswordHasher()
        let db = try PGConnection(config.databaseURL)
        try Migrator.requireCurrent(db)
        switch sub {
        case "create":
            let role = option(args, "--role") ?? "admin"
            guard Role(rawValue: role) != nil else { err("tsubame user create: --role must be viewer, operator or admin"); return 2 }
            let (pw, generated) = try password(args)
            do {
                try db.query("INSERT INTO users (username, password_hash, role) VALUES ($1, $2, $3)", [username, try hasher.hash(pw), role])
            } catch let e as PGError where e.isUniqueViolation {
                err("tsubame user create: a user named \(username) already exists"); return 1
            }
            try db.query("INSERT INTO audit_log (username, action, target) VALUES ('(cli)', 'user.create', $1)", [username])
            out("created \(role) \(username)")
            if generated { out("password: \(pw)") }
            return 0
        case "reset-password":
            let (pw, generated) = try password(args)
            let rows = try db.query("UPDATE users SET password_hash = $2, updated_at = now() WHERE lower(username) = lower($1) RETURNING id",
                                    [username, try hasher.hash(pw)])
            guard let id = rows.first?.int64("id") else { err("tsubame user reset-password: no user named \(username)"); return 1 }
            try db.query("DELETE FROM sessions WHERE user_id = $1", [id])
            try db.query("INSERT INTO audit_log (username, action, target) VALUES ('(cli)', 'user.reset_password', $1)", [username])
            out("password of \(username) reset; their sessions were ended")
            if generated { out("password: \(pw)") }
            return 0
        default:
            err(help("user")); return 2
        }
    }
}

struct PoolLikeError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
