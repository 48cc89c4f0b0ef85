#!/usr/bin/env node
// The published command. Node >= 24 runs the TypeScript sources directly.
import { main } from '../src/cli.ts'

process.exitCode = await main(process.argv.slice(2))
