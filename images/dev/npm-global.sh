# Login shells (`bash -l`) start from /etc/profile's PATH, which drops the image's: put the
# user's npm bin (`npm install -g` as dev) back in front.
case ":$PATH:" in
  *":$HOME/.npm-global/bin:"*) ;;
  *) if [ -d "$HOME/.npm-global/bin" ]; then PATH="$HOME/.npm-global/bin:$PATH"; fi ;;
esac
