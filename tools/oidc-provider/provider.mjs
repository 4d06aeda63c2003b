// A real OpenID Provider for headscale-tw's tests: the certified `oidc-provider`
// package, configured from a JSON file written by
// src/headscale_tw/testing/oidc_provider.py.
//
//   node provider.mjs CONFIG.json
//
// CONFIG.json holds:
//   host, port          where to listen (port 0: the kernel picks one)
//   tls.cert, tls.key   PEM files of a certificate for `host` (https only)
//   ready_file          written (atomically) once listening: {"issuer", "port", "pid"}
//   clients             client registrations, as oidc-provider takes them
//   accounts            login name -> claims (sub, email, email_verified, name, picture, groups, ...);
//                       read again at each sign-in, so a test can change a person's groups
//                       by rewriting the file (atomically) while the provider runs
//   id_token_ttl        seconds an ID token is valid (default 600)
//
// The issuer is https://HOST:PORT, known only once the socket listens, so the
// Provider object is built after `listen` succeeds. Signing keys (one RSA, one
// P-256) are made at start and live only in this process. The login and consent
// forms are oidc-provider's own development interactions: the login form takes
// an account name (the password field is not checked); a name not in `accounts`
// cannot finish a login. Stop it with SIGTERM.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import https from 'node:https';

import Provider from 'oidc-provider';

const configPath = process.argv[2];
if (!configPath) {
  console.error('usage: node provider.mjs CONFIG.json');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));

function signingKeys() {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  return {
    keys: [
      { ...rsa, kid: `rsa-${randomBytes(6).toString('hex')}`, alg: 'RS256', use: 'sig' },
      { ...ec, kid: `ec-${randomBytes(6).toString('hex')}`, alg: 'ES256', use: 'sig' },
    ],
  };
}

async function findAccount(ctx, id) {
  const accounts = JSON.parse(readFileSync(configPath, 'utf8')).accounts || {};
  const account = Object.hasOwn(accounts, id) ? accounts[id] : undefined;
  if (!account) {
    return undefined;
  }
  return {
    accountId: id,
    async claims() {
      return { sub: id, ...account };
    },
  };
}

const providerConfig = {
  clients: config.clients || [],
  findAccount,
  jwks: signingKeys(),
  cookies: { keys: [randomBytes(32).toString('hex')] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'given_name', 'family_name', 'preferred_username', 'picture'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  // Put the scopes' claims into the ID token itself, as Keycloak, Authentik and
  // Entra ID do for a code flow; the userinfo endpoint still answers too.
  conformIdTokenClaims: false,
  // PKCE is the relying party's choice (Headscale's oidc.pkce.enabled); when a
  // code_challenge is sent, the token endpoint checks the verifier.
  pkce: { required: () => false },
  clientBasedCORS: () => false,
  features: { devInteractions: { enabled: true } },
  ttl: {
    AccessToken: 600,
    AuthorizationCode: 120,
    IdToken: config.id_token_ttl || 600,
    Interaction: 600,
    Session: 600,
    Grant: 600,
  },
};

let handler = (req, res) => {
  res.statusCode = 503;
  res.end('starting');
};

const server = https.createServer(
  { cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) },
  (req, res) => handler(req, res),
);

server.listen(config.port || 0, config.host || '127.0.0.1', () => {
  const { port } = server.address();
  const host = (config.host || '127.0.0.1').includes(':') ? `[${config.host}]` : (config.host || '127.0.0.1');
  const issuer = `https://${host}:${port}`;
  const provider = new Provider(issuer, providerConfig);
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  provider.on('grant.error', (ctx, err) => console.error('grant.error', err.message, err.error_description || ''));
  provider.on('authorization.error', (ctx, err) => console.error('authorization.error', err.message, err.error_description || ''));
  handler = provider.callback();
  if (config.ready_file) {
    const tmp = `${config.ready_file}.tmp`;
    writeFileSync(tmp, JSON.stringify({ issuer, port, pid: process.pid }));
    renameSync(tmp, config.ready_file);
  }
  console.log(`oidc-provider listening: ${issuer}`);
});

server.on('error', (err) => {
  console.error(`cannot listen: ${err.message}`);
  process.exit(1);
});

function stop() {
  server.close();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
