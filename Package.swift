// swift-tools-version:6.0
// tsubame-ci: targets and products only; no logic here.
import PackageDescription

let settings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "tsubame-ci",
    products: [
        .executable(name: "tsubame", targets: ["TsubameCLI"]),
        .executable(name: "tsubame-pool", targets: ["TsubamePoolMain"]),
        .executable(name: "tsubame-worker", targets: ["TsubameWorkerMain"]),
        .executable(name: "tsubame-executor", targets: ["TsubameExecutorMain"]),
    ],
    targets: [
        // C libraries from Debian, found through pkg-config. Each is imported by exactly one wrapper module.
        .systemLibrary(name: "CLibPQ", pkgConfig: "libpq", providers: [.apt(["libpq-dev"])]),
        .systemLibrary(name: "CFastCGI", pkgConfig: "fcgi", providers: [.apt(["libfcgi-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CLibSSH2", pkgConfig: "libssh2", providers: [.apt(["libssh2-1-dev"])]),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        .target(name: "CTsubameShims", dependencies: ["CLibSSH2"]),

        // The domain: C-free, Foundation only.
        .target(name: "TsubameCore", swiftSettings: settings),
        // Wrappers that own every pointer, free and error code of their C library.
        .target(name: "TsubamePostgres", dependencies: ["TsubameCore", "CLibPQ"],
                resources: [.embedInCode("Migrations")], swiftSettings: settings),
        .target(name: "TsubameCrypto", dependencies: ["TsubameCore", "COpenSSL"], swiftSettings: settings),
        .target(name: "TsubameFastCGI", dependencies: ["CFastCGI"], swiftSettings: settings),
        .target(name: "TsubameSSH", dependencies: ["TsubameCore", "CLibSSH2", "CTsubameShims"], swiftSettings: settings),
        // Notifications: what they say (webhook, Slack, e-mail) and libcurl to send them (HTTP, SMTP).
        .target(name: "TsubameNotify", dependencies: ["TsubameCore", "TsubameCrypto", "CCurl"], swiftSettings: settings),
        // The application: routes, auth, validation → SQL. Imports no C module.
        .target(name: "TsubameHTTP", dependencies: ["TsubameCore", "TsubameCrypto", "TsubamePostgres", "TsubameFastCGI", "TsubameSSH",
                                                    "TsubamePool", "TsubameNotify"],
                resources: [.embedInCode("Resources")], swiftSettings: settings),
        // The executor: claims targets from the queue, runs them over SSH, writes logs and results.
        .target(name: "TsubameExecutor", dependencies: ["TsubameCore", "TsubamePostgres", "TsubameCrypto", "TsubameSSH", "TsubameNotify"],
                swiftSettings: settings),
        // The pool master: sockets, processes, signals, status.
        .target(name: "TsubamePool", dependencies: ["TsubameCore"], swiftSettings: settings),

        // Thin executables.
        .executableTarget(name: "TsubameCLI", dependencies: ["TsubameCore", "TsubamePostgres", "TsubameCrypto", "TsubameHTTP"], swiftSettings: settings),
        .executableTarget(name: "TsubamePoolMain", dependencies: ["TsubameCore", "TsubamePool"], swiftSettings: settings),
        .executableTarget(name: "TsubameExecutorMain", dependencies: ["TsubameCore", "TsubameExecutor", "TsubameNotify"], swiftSettings: settings),
        .executableTarget(name: "TsubameWorkerMain", dependencies: ["TsubameCore", "TsubameHTTP", "TsubameFastCGI"], swiftSettings: settings),

        .testTarget(name: "TsubameTests",
                    dependencies: ["TsubameCore", "TsubamePostgres", "TsubameCrypto", "TsubameFastCGI", "TsubameHTTP", "TsubamePool", "TsubameSSH", "TsubameExecutor",
                                   "TsubameNotify"],
                    swiftSettings: settings),
    ]
)
