"""Package set-up: every setting lives in settings.ini (nbdev 2 layout); edit there, not here."""
from configparser import ConfigParser
import shlex
import setuptools

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']
expected = 'version description keywords author author_email lib_name user branch license status min_python audience language'.split()
missing = [k for k in expected if k not in cfg]
if missing: raise KeyError(f"settings.ini is missing the keys {missing}")

statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
py_versions = '3.10 3.11 3.12'.split()
if cfg['license'].lower() != 'mit': raise ValueError(f"settings.ini: license {cfg['license']!r} is not handled by setup.py")
min_python = cfg['min_python']
requirements = shlex.split(cfg.get('requirements', ''))
dev_requirements = shlex.split(cfg.get('dev_requirements', ''))
console_scripts = shlex.split(cfg.get('console_scripts', ''))

setuptools.setup(
    name=cfg['lib_name'],
    license='MIT',  # an SPDX expression (license classifiers are deprecated)
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])],
                 'Intended Audience :: ' + cfg['audience'].title(),
                 'Natural Language :: ' + cfg['language'].title()] + ['Programming Language :: Python :: ' + o for o in py_versions[py_versions.index(min_python):]],
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=[cfg['lib_path'], cfg['lib_path'] + '.*']),
    include_package_data=True,
    install_requires=requirements,
    extras_require={'dev': dev_requirements, 'bench': ['anomalib==2.7.0'],
                    'docs': ['sphinx==9.0.4', 'myst-nb==1.4.0', 'myst-parser==5.2.0', 'furo==2025.12.19', 'docutils==0.22.4', 'jupyter-cache==1.0.1',
                             'django-static-mathjax==3.2.2.1']},  # MathJax 3 served by the site itself (no CDN)
    python_requires='>=' + min_python,
    long_description=open('README.md', encoding='utf-8').read() if __import__('os').path.exists('README.md') else cfg['description'],
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'console_scripts': console_scripts, 'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    version=cfg['version'], description=cfg['description'], keywords=cfg['keywords'],
    author=cfg['author'], author_email=cfg['author_email'],
)
