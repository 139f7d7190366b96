/**
 * Tokens are macaroons (crates/burrow-macaroon): `bm1_` + base64url(JSON `{i, c, s}`), the
 * signature chained with HMAC-SHA256 over the id and each caveat. Anyone holding a token can
 * append a caveat and compute the next signature, so narrowing needs no server and no key;
 * widening is impossible.
 */
import { createHmac } from "node:crypto";
import { InvalidRequestError } from "./errors.js";
import type { Caveats } from "./types.js";

const PREFIX = "bm1_";

interface Wire {
  i: string;
  c: string[];
  s: string;
}

function decode(token: string): Wire {
  const t = token.trim();
  const bad = (why: string) => new InvalidRequestError(`not a Burrow token: ${why}`, { code: "invalid_token" });
  if (!t.startsWith(PREFIX)) throw bad(`it should start with ${PREFIX}`);
  let w: Wire;
  try {
    w = JSON.parse(Buffer.from(t.slice(PREFIX.length), "base64url").toString("utf8")) as Wire;
  } catch {
    throw bad("it does not parse");
  }
  if (typeof w?.i !== "string" || !Array.isArray(w.c) || typeof w.s !== "string" || Buffer.from(w.s, "base64url").length !== 32) {
    throw bad("it does not parse");
  }
  return w;
}

/** The caveat texts a token carries (`sandboxes=a,b`, `actions=exec`, `expires=<unix>`), unverified. */
export function inspectToken(token: string): { id: string; caveats: string[] } {
  const w = decode(token);
  return { id: w.i, caveats: [...w.c] };
}

/** The caveat texts for `caveats`, in the order the daemon writes them. */
export function caveatTexts(c: Caveats): string[] {
  const out: string[] = [];
  if (c.sandboxes) out.push(`sandboxes=${c.sandboxes.join(",")}`);
  if (c.actions) out.push(`actions=${c.actions.join(",")}`);
  if (c.expiresAt !== undefined) {
    const t = c.expiresAt instanceof Date ? c.expiresAt : new Date(c.expiresAt);
    if (Number.isNaN(t.getTime())) throw new InvalidRequestError(`expiresAt '${String(c.expiresAt)}' is not a time`, { code: "invalid" });
    out.push(`expires=${Math.floor(t.getTime() / 1000)}`);
  }
  return out;
}

/** A narrower token: `token` with more caveats. Offline; the daemon checks every caveat. */
export function attenuateToken(token: string, caveats: Caveats): string {
  const w = decode(token);
  let sig = Buffer.from(w.s, "base64url");
  const texts = caveatTexts(caveats);
  for (const text of texts) sig = createHmac("sha256", sig).update(text, "utf8").digest();
  const wire: Wire = { i: w.i, c: [...w.c, ...texts], s: sig.toString("base64url") };
  return PREFIX + Buffer.from(JSON.stringify(wire), "utf8").toString("base64url");
}
