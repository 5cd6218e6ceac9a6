// SPDX-License-Identifier: MIT
// `tsubame`: the operator's command-line tool. All logic lives in TsubameHTTP.Commands.
import Foundation
import TsubameHTTP

let code = Commands.run(Array(CommandLine.arguments.dropFirst()),
                        out: { print($0) },
                        err: { line in FileHandle.standardError.write(Data((line + "\n").utf8)) })
exit(code)
