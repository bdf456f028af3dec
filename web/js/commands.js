// Slash commands typed in the composer, and what each sends over the websocket
// (docs/websocket.md). Replies come back as `notice` events; app.js shows them where
// the command was typed.

/** Every command with its arguments, for /help and Tab completion. */
export const HELP = [
  ['/join', '#channel [key]'], ['/part', '[#channel] [reason]'], ['/msg', 'nick [message]'],
  ['/query', 'nick'], ['/me', 'action'], ['/notice', 'target message'], ['/topic', '[new topic]'],
  ['/nick', 'newnick'], ['/whois', 'nick'], ['/mode', '[target] [+/-modes [args]]'],
  ['/op', 'nick…'], ['/deop', 'nick…'], ['/voice', 'nick…'], ['/devoice', 'nick…'],
  ['/kick', 'nick [reason]'], ['/ban', 'nick|mask'], ['/unban', 'mask'], ['/invite', 'nick [#channel]'],
  ['/away', '[message]'], ['/back', ''], ['/list', '[mask]'], ['/motd', ''], ['/raw', 'IRC line'],
  ['/quote', 'IRC line'], ['/help', ''],
];
export const COMMANDS = HELP.map(([c]) => c);

/**
 * Runs one composer line. `ctx` is the app's side:
 * `b` the open buffer (or null), `network` its network, `req(cmd)` sends a websocket
 * command, `open(b)` shows a buffer, `buffer(network, name)` finds or makes one,
 * `netBuffer(network)` the network's own buffer, `note(b, text)` adds a local line,
 * `isChannel(name)`, `joinThenOpen(network, channel)`, `nick` our nick.
 * Throws an Error whose message is shown to the person.
 */
export async function runLine(line, ctx) {
  const { b, network } = ctx;
  const req = (cmd) => ctx.req({ network, ...cmd });
  if (!line.startsWith('/') || line.startsWith('//')) {
    if (!b) throw new Error('Open a buffer first.');
    if (b.kind === 'network') throw new Error('This buffer is for server messages: type a /command (try /help), or open a channel.');
    return req({ type: 'send', buffer: b.name, text: line.startsWith('//') ? line.slice(1) : line });
  }
  const [word, ...rest] = line.split(' ').filter((w, i) => i === 0 || w !== '');
  const cmd = word.toLowerCase();
  const arg = line.slice(word.length).trim();
  const channel = () => {
    if (!b || b.kind !== 'channel') throw new Error(`${cmd} works in a channel.`);
    return b.name;
  };
  const need = (n, usage) => { if (rest.length < n) throw new Error(`Usage: ${cmd} ${usage}`); };
  switch (cmd) {
    case '/join': case '/j': {
      need(1, '#channel [key]');
      const [chan, key] = rest;
      return ctx.joinThenOpen(network, ctx.isChannel(chan) ? chan : `#${chan}`, key);
    }
    case '/part': case '/leave': {
      const chan = rest[0] && ctx.isChannel(rest[0]) ? rest.shift() : channel();
      return req({ type: 'part', channel: chan, reason: rest.join(' ') || undefined });
    }
    case '/msg': case '/query': {
      need(1, 'nick [message]');
      const [target, ...text] = rest;
      const t = ctx.buffer(network, target);
      ctx.open(t);
      if (text.length) return req({ type: 'send', buffer: target, text: text.join(' ') });
      return undefined;
    }
    case '/me':
      if (!b || b.kind === 'network') throw new Error('/me works in a channel or a private buffer.');
      return req({ type: 'send', buffer: b.name, text: arg, action: true });
    case '/notice': {
      need(2, 'target message');
      const [target, ...text] = rest;
      return req({ type: 'send', buffer: target, text: text.join(' '), notice: true });
    }
    case '/topic':
      // Without text: ask the server (the reply shows here).
      if (!arg) return req({ type: 'raw', line: `TOPIC ${channel()}` });
      return req({ type: 'topic', channel: channel(), topic: arg });
    case '/nick':
      need(1, 'newnick');
      return req({ type: 'nick', nick: rest[0] });
    case '/whois':
      need(1, 'nick');
      return req({ type: 'whois', nick: rest[0] });
    case '/mode': {
      // `/mode +i` sets modes on this channel (or on us elsewhere); `/mode #c` asks.
      let target;
      if (rest.length && !/^[+-]/.test(rest[0])) target = rest.shift();
      else target = b?.kind === 'channel' ? b.name : ctx.nick;
      if (!target) throw new Error('Usage: /mode [target] [+/-modes [args]]');
      return req({ type: 'mode', target, modes: rest });
    }
    case '/op': case '/deop': case '/voice': case '/devoice': {
      need(1, 'nick…');
      const chan = channel();
      const sign = cmd.startsWith('/de') ? '-' : '+';
      const letter = cmd.endsWith('op') ? 'o' : 'v';
      // Three nicks per line: every server takes at least that many (MODES).
      for (let i = 0; i < rest.length; i += 3) {
        const nicks = rest.slice(i, i + 3);
        await req({ type: 'mode', target: chan, modes: [sign + letter.repeat(nicks.length), ...nicks] });
      }
      return undefined;
    }
    case '/kick': {
      need(1, 'nick [reason]');
      const [nick, ...reason] = rest;
      return req({ type: 'kick', channel: channel(), nick, reason: reason.join(' ') || undefined });
    }
    case '/ban': case '/unban': {
      need(1, cmd === '/ban' ? 'nick|mask' : 'mask');
      const mask = /[!@$~:]/.test(rest[0]) ? rest[0] : `${rest[0]}!*@*`;
      return req({ type: 'mode', target: channel(), modes: [cmd === '/ban' ? '+b' : '-b', mask] });
    }
    case '/invite': {
      need(1, 'nick [#channel]');
      return req({ type: 'invite', nick: rest[0], channel: rest[1] || channel() });
    }
    case '/away':
      return req({ type: 'away', text: arg || undefined });
    case '/back':
      return req({ type: 'away' });
    case '/list':
      ctx.open(ctx.netBuffer(network));
      return req({ type: 'list', mask: rest[0] });
    case '/motd':
      ctx.open(ctx.netBuffer(network));
      return req({ type: 'raw', line: arg ? `MOTD ${arg}` : 'MOTD' });
    case '/raw': case '/quote':
      if (!arg) throw new Error(`Usage: ${cmd} IRC line, e.g. ${cmd} VERSION`);
      return req({ type: 'raw', line: arg });
    case '/help': case '/commands':
      ctx.note(b, `Commands: ${HELP.map(([c, a]) => (a ? `${c} ${a}` : c)).join(' · ')}`);
      return undefined;
    default:
      throw new Error(`Unknown command ${word}. Type /help for the list.`);
  }
}
