from .cli import run

if __name__ == "__main__":  # pilot processes import this module again and must not run the command
    run()
