// A real OpenID Provider for Sluice's integration tests: the npm package
// `oidc-provider`, configured with
//   - the device authorization flow for the public client `sluice-cli`
//     (ID tokens with email, name, groups; refresh tokens);
//   - client credentials for two confidential clients, `etl-service` and
//     `report-agent`, whose access tokens are JWTs for the resource `sluice`
//     (resource indicator urn:sluice, audience "sluice"); the agent's token says whom it acts for
//     (`on_behalf_of`);
//   - signing keys it makes itself at start: RS256 (ID tokens), ES256
//     (access tokens) and EdDSA.
//
// Started by crates/sluice-testkit/src/idp.rs as `node server.js`. It listens
// on a free port of 127.0.0.1 and prints one line when ready:
//
//   IDP READY http://127.0.0.1:PORT
//
// Environment:
//   IDP_TOKEN_TTL  lifetime of ID and access tokens in seconds (default 300);
//                  short values let tests see tokens expire without a fake clock.
//
// TEST-ONLY endpoints (never part of a real IdP; they exist so that tests
// need no browser and can make bad tokens on purpose), all POST with a JSON body:
//   /test/approve  {user_code, account}   approve a pending device code as `account`
//   /test/rotate   {keep_old}             new signing keys; the old ones stay
//                                         published only when keep_old is true
//   /test/mint     {claims, alg, key}     sign arbitrary claims: alg RS256 | ES256 |
//                                         EdDSA | HS256 | none; key "current"
//                                         (published) or "foreign" (unpublished,
//                                         same kid as the current one)
import http from 'node:http';
import crypto from 'node:crypto';
import * as jose from 'jose';
import Provider from 'oidc-provider';

const TOKEN_TTL = Number.parseInt(process.env.IDP_TOKEN_TTL || '300', 10);

// The people who can sign in. `sub` differs from the email on purpose, so a
// test can see that Sluice names principals by the configured claim.
const ACCOUNTS = {
  'alice@example.com': { sub: 'user-alice', name: 'Alice Example', groups: ['dev'], region: 'eu' },
  'dan@example.com': { sub: 'user-dan', name: 'Dan Admin', groups: ['dba', 'dev'], region: 'us' },
  'bob@example.com': { sub: 'user-bob', name: 'Bob Analyst', groups: ['analyst'], region: 'eu' },
};
const BY_SUB = Object.fromEntries(Object.entries(ACCOUNTS).map(([email, a]) => [a.sub, { email, ...a }]));

const CLIENTS = [
  {
    client_id: 'sluice-cli',
    token_endpoint_auth_method: 'none',
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
    response_types: [],
    redirect_uris: [],
  },
  {
    client_id: 'etl-service',
    client_secret: 'etl-service-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  },
  {
    client_id: 'report-agent',
    client_secret: 'report-agent-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  },
];

// ---- signing keys ------------------------------------------------------------

let generation = 0;

async function makeKeys() {
  generation += 1;
  const out = [];
  for (const [alg, opts] of [['RS256', { modulusLength: 2048 }], ['ES256', {}], ['EdDSA', { crv: 'Ed25519' }]]) {
    const { privateKey } = await jose.generateKeyPair(alg, { ...opts, extractable: true });
    const jwk = await jose.exportJWK(privateKey);
    jwk.alg = alg;
    jwk.use = 'sig';
    jwk.kid = `${alg.toLowerCase()}-${generation}-${crypto.randomBytes(4).toString('hex')}`;
    out.push(jwk);
  }
  return out;
}

let currentKeys = await makeKeys();
let retiredKeys = [];

// ---- the provider --------------------------------------------------------------

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

function makeProvider() {
  const provider = new Provider(issuer, {
    clients: CLIENTS,
    // Retired keys stay in the key set only while kept; the first key of each
    // algorithm signs, so current keys go first.
    jwks: { keys: [...currentKeys, ...retiredKeys] },
    enabledJWA: {
      idTokenSigningAlgValues: ['RS256', 'ES256', 'EdDSA'],
    },
    findAccount: async (_ctx, sub) => {
      const account = BY_SUB[sub];
      if (!account) return undefined;
      return {
        accountId: sub,
        claims: async () => ({
          sub,
          email: account.email,
          email_verified: true,
          name: account.name,
          groups: account.groups,
          region: account.region,
        }),
      };
    },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      groups: ['groups', 'region'],
    },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups', 'db'],
    // Put the requested claims in the ID token itself: it is the password.
    conformIdTokenClaims: false,
    features: {
      devInteractions: { enabled: false },
      deviceFlow: { enabled: true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // Client-credentials tokens are for Sluice unless asked otherwise.
        defaultResource: (_ctx, client) => (client.grantTypeAllowed('client_credentials') ? 'urn:sluice' : undefined),
        getResourceServerInfo: (_ctx, resource) => {
          if (resource !== 'urn:sluice') throw new Error(`unknown resource ${resource}`);
          return {
            scope: 'db',
            audience: 'sluice',
            accessTokenTTL: TOKEN_TTL,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'ES256' } },
          };
        },
        useGrantedResource: () => true,
      },
    },
    extraTokenClaims: async (_ctx, token) => {
      // The agent acts for a person; a real IdP would learn whom from a token
      // exchange, this one knows it by configuration.
      if (token.kind === 'ClientCredentials' && token.clientId === 'report-agent') {
        return { on_behalf_of: 'alice@example.com' };
      }
      return undefined;
    },
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    ttl: {
      AccessToken: TOKEN_TTL,
      ClientCredentials: TOKEN_TTL,
      IdToken: TOKEN_TTL,
      DeviceCode: 600,
      RefreshToken: 3600,
      Grant: 3600,
    },
  });
  provider.on('server_error', (_ctx, err) => console.error('idp server_error:', err));
  return provider;
}

let provider = makeProvider();

// ---- test-only endpoints ---------------------------------------------------------

async function readJson(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : {};
}

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

// Normalize a user code as oidc-provider does (upper case, no separators).
function normalizeUserCode(input) {
  return String(input).toUpperCase().replace(/\W/g, '');
}

async function approve({ user_code: userCode, account }) {
  const who = ACCOUNTS[account];
  if (!who) return [400, { error: `unknown account ${account}` }];
  const code = await provider.DeviceCode.findByUserCode(normalizeUserCode(userCode));
  if (!code) return [404, { error: 'no such user code' }];
  const scope = code.params.scope || 'openid';
  const grant = new provider.Grant({ accountId: who.sub, clientId: code.clientId });
  grant.addOIDCScope(scope);
  grant.addOIDCClaims(['email', 'email_verified', 'name', 'groups', 'region']);
  const grantId = await grant.save();
  Object.assign(code, {
    accountId: who.sub,
    authTime: Math.floor(Date.now() / 1000),
    grantId,
    scope,
  });
  await code.save();
  return [200, { approved: true }];
}

async function rotate({ keep_old: keepOld }) {
  const old = currentKeys;
  currentKeys = await makeKeys();
  retiredKeys = keepOld ? [...old, ...retiredKeys] : [];
  provider = makeProvider();
  return [200, { kids: currentKeys.map((k) => k.kid), retired: retiredKeys.map((k) => k.kid) }];
}

async function mint({ claims, alg = 'RS256', key = 'current' }) {
  const now = Math.floor(Date.now() / 1000);
  const payload = { iss: issuer, iat: now, exp: now + TOKEN_TTL, ...claims };
  if (alg === 'none') {
    return [200, { token: new jose.UnsecuredJWT(payload).encode() }];
  }
  const current = currentKeys.find((k) => k.alg === (alg === 'HS256' ? 'RS256' : alg));
  if (!current) return [400, { error: `no key for ${alg}` }];
  if (alg === 'HS256') {
    // The classic confusion attack: HMAC keyed with the public RSA modulus.
    const secret = Buffer.from(current.n, 'base64url');
    const token = await new jose.SignJWT(payload).setProtectedHeader({ alg, kid: current.kid }).sign(secret);
    return [200, { token }];
  }
  let signing = current;
  if (key === 'foreign') {
    [signing] = (await makeKeys()).filter((k) => k.alg === alg);
    generation -= 1; // keep kid numbering of the real keys readable
  }
  const privateKey = await jose.importJWK(signing, alg);
  const token = await new jose.SignJWT(payload).setProtectedHeader({ alg, kid: current.kid, typ: 'JWT' }).sign(privateKey);
  return [200, { token }];
}

const TEST_ROUTES = { '/test/approve': approve, '/test/rotate': rotate, '/test/mint': mint };

server.on('request', async (req, res) => {
  const route = TEST_ROUTES[req.url];
  if (route && req.method === 'POST') {
    try {
      const [status, body] = await route(await readJson(req));
      send(res, status, body);
    } catch (err) {
      send(res, 500, { error: String(err && err.stack ? err.stack : err) });
    }
    return;
  }
  provider.callback()(req, res);
});

console.log(`IDP READY ${issuer}`);

// Stop with the harness: a closed stdin means the test process is gone.
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0));
