# Sourced by a recipe after its defaults and $usage, before anything else (as Kaldi's
# utils/parse_options.sh): each `--some-name VALUE` sets $some_name, a variable the recipe
# defined; --help prints $usage; anything else stops with the usage.
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) echo "$usage"; exit 0 ;;
    --?*)
      option_name=${1#--}
      option_name=${option_name//-/_}
      if [[ ! $option_name =~ ^[a-z][a-z0-9_]*$ ]] || [ -z "${!option_name+set}" ] || [ "$option_name" = usage ]; then
        echo "unknown option $1"; echo "$usage"; exit 1
      fi
      if [ $# -lt 2 ]; then
        echo "option $1 needs a value"; echo "$usage"; exit 1
      fi
      printf -v "$option_name" '%s' "$2"
      shift 2 ;;
    *) echo "unknown argument $1"; echo "$usage"; exit 1 ;;
  esac
done
unset option_name
