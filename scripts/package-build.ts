// `npm run pack`: the publishable package `pgbouncer-cluster`, built from the
// TypeScript sources (which stay as they are: development runs them directly)
// into build/package/, then packed into dist/ as the one tarball there.
//
// The package is JavaScript, because Node does not strip types under
// node_modules, and it stands alone: the private @pgbouncer-cluster/protocol
// and /worker are bundled in (esbuild), the public dependencies stay
// dependencies. The worker thread is an entry of its own, lib/thread.js,
// which `workerEntry` finds beside the compiled code. The types are tsc's
// declarations of the public entry, which name nothing outside it.

import { execFileSync } from 'node:child_process'
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { dirname, join, posix, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as esbuild from 'esbuild'
import ts from 'typescript'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const coordinator = join(root, 'packages', 'coordinator')
const INTERNAL = '@pgbouncer-cluster/'
/** The oldest Node the package runs on: listen({ reusePort }) came in 22.12. */
export const MIN_NODE = '22.12'

const readJson = (path: string) => JSON.parse(readFileSync(path, 'utf8'))

/** Builds build/package/ and returns its path. */
export async function buildPackage(out = join(root, 'build', 'package')): Promise<string> {
  rmSync(out, { recursive: true, force: true })
  mkdirSync(join(out, 'bin'), { recursive: true })
  const manifest = readJson(join(coordinator, 'package.json'))
  const dependencies = publicDependencies()

  await esbuild.build({
    absWorkingDir: root,
    entryPoints: {
      api: 'packages/coordinator/src/index.ts',
      cli: 'packages/coordinator/src/cli.ts',
      thread: 'packages/worker/src/thread.ts',
    },
    outdir: join(out, 'lib'),
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: `node${MIN_NODE}`,
    chunkNames: 'chunk-[hash]',
    external: Object.keys(dependencies).flatMap((name) => [name, `${name}/*`]),
    logLevel: 'warning',
  })
  writeDeclarations(join(out, 'lib'))
  writeEntry(join(out, 'lib'))

  // The bin stays the plain JavaScript version check; only its import target changes.
  const bin = readFileSync(join(coordinator, 'bin', 'pgbouncer-cluster.js'), 'utf8')
  const packedBin = bin.replace("import('../src/cli.ts')", "import('../lib/cli.js')")
  if (packedBin === bin) throw new Error('package-build: the bin no longer imports ../src/cli.ts')
  writeFileSync(join(out, 'bin', 'pgbouncer-cluster.js'), packedBin, { mode: 0o755 })
  writeFileSync(join(out, 'README.md'), readFileSync(join(root, 'README.md')))

  const pkg = {
    name: manifest.name,
    version: manifest.version,
    description: manifest.description,
    keywords: ['postgresql', 'pgbouncer', 'connection-pooler', 'pooler'],
    type: 'module',
    bin: { 'pgbouncer-cluster': './bin/pgbouncer-cluster.js' },
    exports: {
      '.': { types: './lib/index.d.ts', default: './lib/index.js' },
      './package.json': './package.json',
    },
    types: './lib/index.d.ts',
    files: ['bin', 'lib'],
    engines: { node: `>=${MIN_NODE}` },
    dependencies,
  }
  writeFileSync(join(out, 'package.json'), `${JSON.stringify(pkg, null, 2)}\n`)
  return out
}

/**
 * lib/index.js, the API's entry: on a Node too old for the pooler, importing
 * the package fails with the line the bin prints, before any of the API's
 * code runs (an import's dependencies run in the order they are written, so
 * the check, imported first, runs first). Both files are plain JavaScript
 * that any Node parses.
 */
function writeEntry(lib: string): void {
  const [major, minor] = MIN_NODE.split('.').map(Number)
  writeFileSync(
    join(lib, 'node-version.js'),
    `// Throws on a Node.js older than the pooler needs, with the line the command prints.
const [major, minor] = process.versions.node.split('.').map(Number)
if (major < ${major} || (major === ${major} && minor < ${minor})) {
  throw new Error(\`pgbouncer-cluster needs Node.js >= ${MIN_NODE} (this is \${process.versions.node})\`)
}
`,
  )
  writeFileSync(
    join(lib, 'index.js'),
    "// The API. The version check runs before the API's own code.\nimport './node-version.js'\nexport * from './api.js'\n",
  )
}

/** The dependencies of the bundled workspace packages that are not themselves bundled. */
function publicDependencies(): Record<string, string> {
  const out: Record<string, string> = {}
  for (const name of ['protocol', 'worker', 'coordinator']) {
    const deps: Record<string, string> =
      readJson(join(root, 'packages', name, 'package.json')).dependencies ?? {}
    for (const [dep, range] of Object.entries(deps)) {
      if (dep.startsWith(INTERNAL)) continue
      if (out[dep] !== undefined && out[dep] !== range) {
        throw new Error(`package-build: ${dep} is wanted as ${out[dep]} and as ${range}`)
      }
      out[dep] = range
    }
  }
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : 1)))
}

/**
 * tsc's declarations for the public entry and the files it names, with their
 * `.ts` imports written as `.js`. A declaration that reaches into a bundled
 * package would name a package the user cannot install: that fails the build.
 */
function writeDeclarations(lib: string): void {
  const src = join(coordinator, 'src')
  const config = ts.getParsedCommandLineOfConfigFile(
    join(root, 'tsconfig.json'),
    {},
    {
      ...ts.sys,
      onUnRecoverableConfigFileDiagnostic: (d) => {
        throw new Error(ts.flattenDiagnosticMessageText(d.messageText, '\n'))
      },
    },
  )
  if (config === undefined) throw new Error('package-build: cannot read tsconfig.json')
  const options: ts.CompilerOptions = {
    ...config.options,
    noEmit: false,
    declaration: true,
    emitDeclarationOnly: true,
    outDir: lib,
    rootDir: src,
  }
  const program = ts.createProgram([join(src, 'index.ts')], options)
  const wanted = [join(src, 'index.ts')]
  const written = new Set<string>()
  while (wanted.length > 0) {
    const file = wanted.pop()!
    if (written.has(file)) continue
    written.add(file)
    const source = program.getSourceFile(file)
    if (source === undefined) throw new Error(`package-build: ${file} is not in the program`)
    let text = ''
    const result = program.emit(
      source,
      (_name, data) => {
        text = data
      },
      undefined,
      true,
    )
    const errors = result.diagnostics.filter((d) => d.category === ts.DiagnosticCategory.Error)
    if (errors.length > 0) {
      throw new Error(ts.formatDiagnostics(errors, ts.createCompilerHost(options)))
    }
    for (const [, spec] of text.matchAll(/from '([^']+)'|import\('([^']+)'\)/g)) {
      if (spec === undefined) continue
      if (spec.startsWith('.')) {
        wanted.push(resolve(dirname(file), spec))
      } else if (spec.startsWith(INTERNAL)) {
        throw new Error(
          `package-build: the public types of ${relative(root, file)} name ${spec}, which is not published`,
        )
      }
    }
    const out = join(lib, relative(src, file)).replace(/\.ts$/, '.d.ts')
    mkdirSync(dirname(out), { recursive: true })
    writeFileSync(out, text.replace(/(from '\.[^']*)\.ts'/g, "$1.js'"))
  }
}

/** Packs the built package into dist/, replacing any tarball there; returns the tarball's path. */
export function packTarball(pkgDir: string, dist = join(root, 'dist')): string {
  mkdirSync(dist, { recursive: true })
  for (const name of readdirSync(dist)) {
    if (name.endsWith('.tgz')) rmSync(join(dist, name))
  }
  const json = execFileSync('npm', ['pack', pkgDir, '--pack-destination', dist, '--json'], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const [{ filename }] = JSON.parse(json) as { filename: string }[]
  return join(dist, posix.basename(filename))
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const started = performance.now()
  const dir = await buildPackage()
  const tarball = packTarball(dir)
  const ms = Math.round(performance.now() - started)
  const kb = (statSync(tarball).size / 1024).toFixed(1)
  console.log(`${relative(process.cwd(), tarball)}: ${kb} kB, built and packed in ${ms} ms`)
}
