/** Flag parsing for the data commands, turning every mistake into a UserError. */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { UserError } from "../errors.ts";

export function parseFlags(
  args: string[],
  options: NonNullable<ParseArgsConfig["options"]>,
  usage: string,
  allowPositionals = false,
): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({ args, options, allowPositionals, strict: true });
    return { values: values as Record<string, string | boolean | undefined>, positionals };
  } catch (e) {
    throw new UserError(`${(e as Error).message}\n${usage}`);
  }
}
