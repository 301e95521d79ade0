// A real OpenID Provider (the npm registry's oidc-provider) on 127.0.0.1, issuing RFC 9068 JWT
// access tokens, driven by tests/oidc_provider.rs over stdin/stdout, one command per line:
//   user mfa | user pwd  -> "token <jwt>": an authorization-code flow, signed in with that amr
//   client               -> "token <jwt>": a client-credentials grant
//   rotate               -> "rotated <kid>": sign with a new key from now on, the old one still published
//   dpop <how> <base> <url>
//                        -> "dpop <status> <attempts> <token> <proof>": a DPoP-bound token (RFC 9449)
//                           from an authorization-code flow, then a request to <url> made by
//                           oauth4webapi with its proof, sent to <base> (the gateway behind <url>'s
//                           origin); made again with the server's nonce if it asks for one
//   mtls <how> <dir>     -> "mtls <jwt>": a certificate-bound token (RFC 8705) from an
//                           authorization-code flow whose token request is made over TLS with the
//                           client certificate in <dir> (ca.pem, server.crt/.key for the
//                           provider's TLS port, client.crt/.key for the client)
// This script is also the flows' client: it follows the redirects with a cookie jar as a
// browser would, finishing the login and consent interactions itself. For DPoP the token request
// and the call are oauth4webapi's: a real client making the proofs.
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as crypto from 'node:crypto';
import * as readline from 'node:readline';
import Provider from 'oidc-provider';
import * as oauth from 'oauth4webapi';

const API = 'https://api.partnercenter.microsoft.com';
const REDIRECT = 'http://127.0.0.1:9/cb';
const clients = [
  { client_id: 'web', client_secret: 'web-secret', redirect_uris: [REDIRECT], grant_types: ['authorization_code'],
    response_types: ['code'] },
  { client_id: 'mtls-web', client_secret: 'mtls-secret', redirect_uris: [REDIRECT], grant_types: ['authorization_code'],
    response_types: ['code'], tls_client_certificate_bound_access_tokens: true },
  { client_id: 'reporting-job', client_secret: 'job-secret', redirect_uris: [], grant_types: ['client_credentials'],
    response_types: [] },
];

function newKey(kid) {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid, use: 'sig', alg: 'RS256' };
}

let keys = [newKey('op-1')];
let handler = null;
const server = http.createServer((req, res) => handler(req, res));
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

function build() {
  const provider = new Provider(issuer, {
    clients,
    jwks: { keys },
    cookies: { keys: ['test-cookie-key-0123456789'] },
    findAccount: async (ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      // The client certificate of the TLS connection the request came on (the mTLS port's).
      mTLS: {
        enabled: true,
        certificateBoundAccessTokens: true,
        getCertificate: (ctx) => ctx.socket.getPeerX509Certificate?.(),
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => API,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: 'api:read api:write', audience: API, accessTokenFormat: 'jwt', accessTokenTTL: 600,
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    // RFC 9068 §2.2.1: a token issued after a user signed in carries how (amr, acr, auth_time).
    extraTokenClaims: async (ctx) => {
      const code = ctx.oidc.entities.AuthorizationCode;
      return code ? { amr: code.amr, acr: code.acr, auth_time: code.authTime } : undefined;
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  });
  const callback = provider.callback();
  return async (req, res) => {
    if (!req.url.startsWith('/interaction/')) return callback(req, res);
    try {
      const details = await provider.interactionDetails(req, res);
      let result;
      if (details.prompt.name === 'login') {
        // The login_hint says how the user signs in: "mfa" with a second factor, else a password.
        const mfa = details.params.login_hint === 'mfa';
        result = { login: { accountId: 'alice', amr: mfa ? ['pwd', 'mfa'] : ['pwd'], acr: mfa ? 'mfa' : 'pwd' } };
      } else {
        const grant = new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
        grant.addOIDCScope('openid');
        grant.addResourceScope(API, 'api:read');
        result = { consent: { grantId: await grant.save() } };
      }
      await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
    } catch (e) {
      res.statusCode = 500;
      res.end(String(e));
    }
  };
}
handler = build();

const basic = (id, secret) => `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`;

async function tokenRequest(auth, form) {
  const r = await fetch(`${issuer}/token`, {
    method: 'POST',
    headers: { authorization: auth, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(form),
  });
  const body = await r.json();
  if (!body.access_token) throw new Error(`token endpoint: ${JSON.stringify(body)}`);
  return body.access_token;
}

/// Signs `how` in through /auth and returns the redirect back with its code, and the PKCE verifier.
async function authorize(how, clientId = 'web') {
  const verifier = crypto.randomBytes(32).toString('base64url');
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
  const params = new URLSearchParams({
    client_id: clientId, response_type: 'code', redirect_uri: REDIRECT, scope: 'openid api:read', resource: API,
    login_hint: how, code_challenge: challenge, code_challenge_method: 'S256', state: 's1',
  });
  const jar = new Map();
  let url = `${issuer}/auth?${params}`;
  for (let hop = 0; hop < 10; hop += 1) {
    const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
    const r = await fetch(url, { redirect: 'manual', headers: cookie ? { cookie } : {} });
    for (const c of r.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const i = pair.indexOf('=');
      jar.set(pair.slice(0, i), pair.slice(i + 1));
    }
    const location = r.headers.get('location');
    if (!location) throw new Error(`no redirect from ${url}: ${r.status} ${await r.text()}`);
    const next = new URL(location, url);
    if (next.href.startsWith(REDIRECT)) {
      if (!next.searchParams.get('code')) throw new Error(`no code: ${next.href}`);
      return { callback: next, verifier };
    }
    url = next.href;
  }
  throw new Error('too many redirects');
}

async function userToken(how) {
  const { callback, verifier } = await authorize(how);
  return tokenRequest(basic('web', 'web-secret'), {
    grant_type: 'authorization_code', code: callback.searchParams.get('code'), redirect_uri: REDIRECT,
    code_verifier: verifier, resource: API,
  });
}

/// oauth4webapi end to end: discovery, a DPoP-bound token for the code, then one call to `url`
/// with its proof. The call goes to `base`, as a front proxy at `url`'s origin would pass it on.
async function dpopCall(how, base, url) {
  const insecure = { [oauth.allowInsecureRequests]: true };
  const as = await oauth.processDiscoveryResponse(new URL(issuer), await oauth.discoveryRequest(new URL(issuer), insecure));
  const client = { client_id: 'web' };
  const DPoP = oauth.DPoP(client, await oauth.generateKeyPair('ES256'));
  const { callback, verifier } = await authorize(how);
  const params = oauth.validateAuthResponse(as, client, callback, 's1');
  const grant = await oauth.authorizationCodeGrantRequest(as, client, oauth.ClientSecretBasic('web-secret'), params,
    REDIRECT, verifier, { DPoP, additionalParameters: { resource: API }, ...insecure });
  const tokens = await oauth.processAuthorizationCodeResponse(as, client, grant);
  if (tokens.token_type.toLowerCase() !== 'dpop') throw new Error(`not DPoP-bound: ${tokens.token_type}`);
  let proof = '-';
  const viaGateway = (target, options) => {
    proof = new Headers(options.headers).get('dpop');
    const u = new URL(target);
    return fetch(`${base}${u.pathname}${u.search}`, options);
  };
  // A server that wants a nonce answers use_dpop_nonce with one; the handle keeps it, and the
  // call is made again (RFC 9449 §9), as oauth4webapi's documentation says to.
  for (let attempt = 1; ; attempt += 1) {
    let r;
    try {
      r = await oauth.protectedResourceRequest(tokens.access_token, 'GET', new URL(url), new Headers(), null,
        { DPoP, [oauth.customFetch]: viaGateway });
    } catch (e) {
      if (oauth.isDPoPNonceError(e) && attempt < 3) continue;
      throw e;
    }
    return `${r.status} ${attempt} ${tokens.access_token} ${proof}`;
  }
}

/// The token endpoint on a TLS port that asks for a client certificate and takes any (RFC 8705
/// §2.2), started on first use with the certificates in `dir`.
let mtlsPort = null;
async function mtlsToken(how, dir) {
  const read = (name) => fs.readFileSync(`${dir}/${name}`);
  if (!mtlsPort) {
    const tls = https.createServer({ key: read('server.key'), cert: read('server.crt'), requestCert: true,
      rejectUnauthorized: false }, (req, res) => handler(req, res));
    await new Promise((resolve) => tls.listen(0, '127.0.0.1', resolve));
    mtlsPort = tls.address().port;
  }
  const { callback, verifier } = await authorize(how, 'mtls-web');
  const form = new URLSearchParams({
    grant_type: 'authorization_code', code: callback.searchParams.get('code'), redirect_uri: REDIRECT,
    code_verifier: verifier, resource: API,
  }).toString();
  const body = await new Promise((resolve, reject) => {
    const req = https.request(`https://127.0.0.1:${mtlsPort}/token`, {
      method: 'POST', ca: read('ca.pem'), cert: read('client.crt'), key: read('client.key'),
      headers: { authorization: basic('mtls-web', 'mtls-secret'), 'content-type': 'application/x-www-form-urlencoded' },
    }, (res) => {
      let text = '';
      res.on('data', (chunk) => { text += chunk; });
      res.on('end', () => resolve(JSON.parse(text)));
    });
    req.on('error', reject);
    req.end(form);
  });
  if (!body.access_token) throw new Error(`token endpoint: ${JSON.stringify(body)}`);
  return body.access_token;
}

const clientToken = () => tokenRequest(basic('reporting-job', 'job-secret'), {
  grant_type: 'client_credentials', scope: 'api:read', resource: API,
});

console.log(`ready ${issuer}`);
const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  const [cmd, arg, ...rest] = line.trim().split(/\s+/);
  try {
    if (cmd === 'user') console.log(`token ${await userToken(arg)}`);
    else if (cmd === 'client') console.log(`token ${await clientToken()}`);
    else if (cmd === 'mtls') console.log(`mtls ${await mtlsToken(arg, rest[0])}`);
    else if (cmd === 'dpop') console.log(`dpop ${await dpopCall(arg, rest[0], rest[1])}`);
    else if (cmd === 'rotate') {
      const kid = `op-${keys.length + 1}`;
      keys = [newKey(kid), ...keys];
      handler = build();
      console.log(`rotated ${kid}`);
    } else console.log(`error unknown command ${cmd}`);
  } catch (e) {
    console.log(`error ${String(e.message || e).replace(/\s+/g, ' ')}`);
  }
}
process.exit(0);
